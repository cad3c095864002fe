using MLNetPeft.Training.Reinforcement;
using MLNetPeft.Training.RewardModeling;

namespace MLNetPeft.Training.Grpo;

/// <summary>One of the rewards GRPO sums: its name (in the metrics), the function and its weight.</summary>
public sealed record WeightedReward(string Name, IRewardFunction Function, double Weight = 1.0);

/// <summary>
/// Settings of <see cref="GrpoTrainer"/>, with TRL's <c>GRPOConfig</c> defaults. A micro-batch of BatchSize completions
/// holds BatchSize / <see cref="NumGenerations"/> prompts, each answered NumGenerations times.
/// </summary>
public sealed class GrpoOptions
{
    /// <summary>G, the completions sampled per prompt; their rewards are compared within the group.</summary>
    public int NumGenerations { get; set; } = 8;
    /// <summary>β of the KL term (k3 estimator) to the reference; 0 (the default) needs no reference.</summary>
    public double Beta { get; set; }
    /// <summary>ε of the clipped objective, below 1.</summary>
    public double Epsilon { get; set; } = 0.2;
    /// <summary>ε above 1 (DAPO's clip-higher); null uses <see cref="Epsilon"/>.</summary>
    public double? EpsilonHigh { get; set; }
    /// <summary>Divide each advantage by its group's reward standard deviation (TRL's scale_rewards = "group"); false only centres.</summary>
    public bool ScaleRewards { get; set; } = true;
    /// <summary>How completions are sampled; TRL's GRPO samples at temperature 1.0 and up to 256 tokens.</summary>
    public SamplingOptions Sampling { get; set; } = new() { Temperature = 1.0, MaxNewTokens = 256 };

    public void Validate()
    {
        if (NumGenerations < 2) throw new ArgumentOutOfRangeException(nameof(NumGenerations), NumGenerations, "must be at least 2: advantages compare completions of a prompt");
        if (!(Beta >= 0) || !double.IsFinite(Beta)) throw new ArgumentOutOfRangeException(nameof(Beta), Beta, "must be a finite number ≥ 0");
        if (!(Epsilon > 0 && Epsilon < 1)) throw new ArgumentOutOfRangeException(nameof(Epsilon), Epsilon, "must be in (0, 1)");
        if (EpsilonHigh is { } high && !(high > 0 && double.IsFinite(high))) throw new ArgumentOutOfRangeException(nameof(EpsilonHigh), high, "must be a finite number > 0");
        ArgumentNullException.ThrowIfNull(Sampling, nameof(Sampling));
        Sampling.Validate();
    }
}
