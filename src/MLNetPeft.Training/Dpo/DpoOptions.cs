namespace MLNetPeft.Training.Dpo;

/// <summary>The DPO losses TRL offers that this library implements (TRL's <c>loss_type</c>).</summary>
public enum DpoLossType
{
    /// <summary>−log σ(β·h), with label smoothing ε: −(1−ε)·log σ(β·h) − ε·log σ(−β·h) (conservative DPO). The original DPO loss.</summary>
    Sigmoid,
    /// <summary>(h − 1/(2β))² on per-token average log-probabilities (IPO, Azar et al. 2023).</summary>
    Ipo,
    /// <summary>max(0, 1 − β·h) (the hinge loss of SLiC).</summary>
    Hinge,
    /// <summary>(−(1−ε)·log σ(β·h) + ε·log σ(−β·h)) / (1 − 2ε): unbiased under label noise ε (robust DPO, Chowdhury et al. 2024).</summary>
    Robust,
}

/// <summary>
/// Settings of <see cref="DpoTrainer"/>, with TRL's <c>DPOConfig</c> defaults. Throughout, h = (log π(y_c|x) − log π(y_r|x))
/// − (log π_ref(y_c|x) − log π_ref(y_r|x)), the log-probabilities summed over the response tokens.
/// </summary>
public sealed class DpoOptions
{
    /// <summary>β: how far from the reference the policy may move (smaller: further).</summary>
    public double Beta { get; set; } = 0.1;
    public DpoLossType LossType { get; set; } = DpoLossType.Sigmoid;
    /// <summary>ε, the assumed rate of flipped labels (Sigmoid and Robust only), in [0, 0.5).</summary>
    public double LabelSmoothing { get; set; }
    /// <summary>
    /// α of RPO: adds α times the mean negative log-likelihood of the chosen responses' tokens to the loss (an SFT term
    /// on the chosen side); null adds nothing. The RPO paper uses 1.
    /// </summary>
    public double? RpoAlpha { get; set; }
    /// <summary>Compute the reference log-probabilities of every pair once before training instead of in every step.</summary>
    public bool PrecomputeReferenceLogProbs { get; set; }
    /// <summary>Run the policy without dropout while training (TRL's disable_dropout, on by default); the reference always runs without.</summary>
    public bool DisableDropout { get; set; } = true;

    public void Validate()
    {
        if (!(Beta > 0) || !double.IsFinite(Beta)) throw new ArgumentOutOfRangeException(nameof(Beta), Beta, "must be a finite number > 0");
        if (!(LabelSmoothing >= 0 && LabelSmoothing < 0.5)) throw new ArgumentOutOfRangeException(nameof(LabelSmoothing), LabelSmoothing, "must be in [0, 0.5)");
        if (LabelSmoothing > 0 && LossType is not (DpoLossType.Sigmoid or DpoLossType.Robust))
            throw new ArgumentException($"{nameof(LabelSmoothing)} applies to the Sigmoid and Robust losses only, not {LossType}.", nameof(LabelSmoothing));
        if (!Enum.IsDefined(LossType)) throw new ArgumentOutOfRangeException(nameof(LossType), LossType, $"must be one of {string.Join(", ", Enum.GetNames<DpoLossType>())}");
        if (RpoAlpha is { } alpha && !(alpha >= 0 && double.IsFinite(alpha))) throw new ArgumentOutOfRangeException(nameof(RpoAlpha), alpha, "must be a finite number ≥ 0");
    }
}

/// <summary>
/// DPO's figures over preference pairs, TRL's metrics: the loss, the implicit rewards β·(log π − log π_ref) of the
/// chosen and rejected responses (means), the share of pairs whose chosen reward is higher, the mean reward margin,
/// and the policy's mean log-probabilities of each side.
/// </summary>
public sealed record DpoMetrics(int Pairs, double Loss, double RewardsChosen, double RewardsRejected, double RewardsAccuracy,
    double RewardsMargin, double LogpsChosen, double LogpsRejected);
