using MLNetPeft.ML.FineTuning;
using MLNetPeft.Training.Grpo;
using MLNetPeft.Training.Ppo;

namespace MLNetPeft.ML.Reinforcement;

/// <summary>Where PPO's critic starts.</summary>
public enum ValueModelInit
{
    /// <summary>
    /// A copy of the policy's starting model with a new scalar head (the default): it reads the policy's own tokens, works
    /// with every reward (rule-based rewards have no model to start from) and with a reward model of another architecture.
    /// </summary>
    FromPolicy,
    /// <summary>A copy of the reward model (TRL's choice): its head already estimates the final score. Needs a reward model on a causal LM with the policy's vocabulary.</summary>
    FromRewardModel,
}

/// <summary>Options of <see cref="CausalLmPpoEstimator"/>: the reward, PPO's settings, and what every causal-LM tuning estimator shares.</summary>
public sealed class CausalLmPpoOptions : CausalLmTuningOptions
{
    /// <summary>What PPO maximises: a reward-model transformer, a delegate, or a reward that reads columns of the prompt's row. Required.</summary>
    public RlReward? Reward { get; set; }
    /// <summary>Epochs, minibatches, KL penalty, clipping, GAE and sampling (TRL's defaults).</summary>
    public PpoOptions Ppo { get; set; } = new();
    public ValueModelInit ValueModel { get; set; } = ValueModelInit.FromPolicy;

    internal override IEnumerable<(string Option, string? Value)> ColumnOptions =>
        [(nameof(PromptColumnName), PromptColumnName), (nameof(OutputColumnName), OutputColumnName)];

    internal override void Validate()
    {
        base.Validate();
        if (Reward is null) throw new ArgumentException("PPO needs a Reward: a reward-model transformer, a delegate, or a row reward.", nameof(Reward));
        ArgumentNullException.ThrowIfNull(Ppo, nameof(Ppo));
        Ppo.Validate();
        if (!Enum.IsDefined(ValueModel)) throw new ArgumentOutOfRangeException(nameof(ValueModel), ValueModel, $"must be one of {string.Join(", ", Enum.GetNames<ValueModelInit>())}");
    }
}

/// <summary>Options of <see cref="CausalLmGrpoEstimator"/>: the rewards (summed with their weights), GRPO's settings, and what every causal-LM tuning estimator shares.</summary>
public sealed class CausalLmGrpoOptions : CausalLmTuningOptions
{
    /// <summary>The rewards GRPO sums with their weights; at least one, with distinct names.</summary>
    public IReadOnlyList<RlReward> Rewards { get; set; } = [];
    /// <summary>Generations per prompt, β, clipping and sampling (TRL's defaults).</summary>
    public GrpoOptions Grpo { get; set; } = new();

    internal override IEnumerable<(string Option, string? Value)> ColumnOptions =>
        [(nameof(PromptColumnName), PromptColumnName), (nameof(OutputColumnName), OutputColumnName)];

    internal override void Validate()
    {
        base.Validate();
        if (Rewards is null || Rewards.Count == 0) throw new ArgumentException("GRPO needs at least one reward in Rewards.", nameof(Rewards));
        if (Rewards.Any(r => r is null)) throw new ArgumentException("Rewards holds a null entry.", nameof(Rewards));
        if (Rewards.GroupBy(r => r.Name).FirstOrDefault(g => g.Count() > 1) is { } twice) throw new ArgumentException($"Two rewards are named '{twice.Key}'.", nameof(Rewards));
        ArgumentNullException.ThrowIfNull(Grpo, nameof(Grpo));
        Grpo.Validate();
        if (Training.BatchSize % Grpo.NumGenerations != 0)
            throw new ArgumentException($"Training.BatchSize ({Training.BatchSize}) counts completions and must be a multiple of Grpo.NumGenerations ({Grpo.NumGenerations}).", nameof(Training));
    }
}
