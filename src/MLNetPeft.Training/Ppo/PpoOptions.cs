using MLNetPeft.Training.Reinforcement;

namespace MLNetPeft.Training.Ppo;

/// <summary>
/// Settings of <see cref="PpoTrainer"/>, with TRL's <c>PPOConfig</c> defaults. A rollout batch holds
/// <see cref="NumMiniBatches"/> × BatchSize × GradientAccumulationSteps prompts (TRL's local_batch_size); each rollout
/// is learned from for <see cref="NumPpoEpochs"/> passes of <see cref="NumMiniBatches"/> optimizer updates, and every
/// such update is one step of <see cref="TrainingOptions.MaxSteps"/>.
/// </summary>
public sealed class PpoOptions
{
    /// <summary>Passes over each rollout batch (TRL's num_ppo_epochs).</summary>
    public int NumPpoEpochs { get; set; } = 4;
    /// <summary>Optimizer updates per pass over a rollout batch (TRL's num_mini_batches).</summary>
    public int NumMiniBatches { get; set; } = 1;
    /// <summary>The weight of the per-token KL penalty −kl_coef · KL in the reward (the initial one when <see cref="AdaptiveKl"/> is set).</summary>
    public double KlCoef { get; set; } = 0.05;
    public KlEstimator KlEstimator { get; set; } = KlEstimator.K1;
    /// <summary>Adapts kl_coef towards a target KL after every rollout (Ziegler et al. 2019); null keeps it fixed (TRL's current behaviour).</summary>
    public AdaptiveKlOptions? AdaptiveKl { get; set; }
    /// <summary>ε of the clipped policy objective.</summary>
    public double ClipRange { get; set; } = 0.2;
    /// <summary>How far a value may move from the rollout's before its loss is clipped.</summary>
    public double ClipRangeValue { get; set; } = 0.2;
    /// <summary>The value loss's weight in the loss (policy loss + vf_coef · value loss).</summary>
    public double VfCoef { get; set; } = 0.1;
    /// <summary>Discount γ of GAE.</summary>
    public double Gamma { get; set; } = 1.0;
    /// <summary>λ of GAE.</summary>
    public double Lambda { get; set; } = 0.95;
    /// <summary>Scale the per-token rewards to unit variance (mean kept) before GAE.</summary>
    public bool WhitenRewards { get; set; }
    /// <summary>Subtracted from the score of a response that did not end with eos; null leaves it as it is.</summary>
    public double? MissingEosPenalty { get; set; }
    /// <summary>How responses are sampled (temperature 0.7, at most 53 tokens).</summary>
    public SamplingOptions Sampling { get; set; } = new();

    public void Validate()
    {
        static void Positive(double value, string name) { if (!(value > 0) || !double.IsFinite(value)) throw new ArgumentOutOfRangeException(name, value, "must be a finite number > 0"); }
        static void NotNegative(double value, string name) { if (!(value >= 0) || !double.IsFinite(value)) throw new ArgumentOutOfRangeException(name, value, "must be a finite number ≥ 0"); }
        Positive(NumPpoEpochs, nameof(NumPpoEpochs));
        Positive(NumMiniBatches, nameof(NumMiniBatches));
        NotNegative(KlCoef, nameof(KlCoef));
        if (!Enum.IsDefined(KlEstimator)) throw new ArgumentOutOfRangeException(nameof(KlEstimator), KlEstimator, $"must be one of {string.Join(", ", Enum.GetNames<KlEstimator>())}");
        Positive(ClipRange, nameof(ClipRange));
        Positive(ClipRangeValue, nameof(ClipRangeValue));
        NotNegative(VfCoef, nameof(VfCoef));
        if (!(Gamma is >= 0 and <= 1)) throw new ArgumentOutOfRangeException(nameof(Gamma), Gamma, "must be in [0, 1]");
        if (!(Lambda is >= 0 and <= 1)) throw new ArgumentOutOfRangeException(nameof(Lambda), Lambda, "must be in [0, 1]");
        if (MissingEosPenalty is { } penalty) NotNegative(penalty, nameof(MissingEosPenalty));
        AdaptiveKl?.Validate();
        ArgumentNullException.ThrowIfNull(Sampling, nameof(Sampling));
        Sampling.Validate();
    }
}

/// <summary>
/// The adaptive KL controller of Ziegler et al. (2019), as TRL's earlier PPO trainer had it: after each rollout,
/// kl_coef ← kl_coef · (1 + clip(KL / target − 1, −0.2, 0.2) · rows / horizon), where KL is the rollout's mean summed KL.
/// </summary>
public sealed class AdaptiveKlOptions
{
    public double Target { get; set; } = 6.0;
    public double Horizon { get; set; } = 10_000;

    /// <summary>The coefficient after a rollout of <paramref name="rows"/> responses whose mean KL was <paramref name="kl"/>.</summary>
    public double Update(double klCoef, double kl, int rows) => klCoef * (1 + Math.Clamp(kl / Target - 1, -0.2, 0.2) * rows / Horizon);

    public void Validate()
    {
        if (!(Target > 0) || !double.IsFinite(Target)) throw new ArgumentOutOfRangeException(nameof(Target), Target, "must be a finite number > 0");
        if (!(Horizon > 0) || !double.IsFinite(Horizon)) throw new ArgumentOutOfRangeException(nameof(Horizon), Horizon, "must be a finite number > 0");
    }
}
