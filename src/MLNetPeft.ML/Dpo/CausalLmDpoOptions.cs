using MLNetPeft.ML.FineTuning;
using MLNetPeft.Training.Dpo;

namespace MLNetPeft.ML.Dpo;

/// <summary>Options of <see cref="CausalLmDpoEstimator"/>: the preference columns, DPO's settings, and what every causal-LM tuning estimator shares.</summary>
public sealed class CausalLmDpoOptions : CausalLmTuningOptions
{
    /// <summary>Text column with the preferred response; the default is "Chosen".</summary>
    public string ChosenColumnName { get; set; } = "Chosen";
    /// <summary>Text column with the dispreferred response; the default is "Rejected".</summary>
    public string RejectedColumnName { get; set; } = "Rejected";
    /// <summary>β, the loss, label smoothing, RPO's SFT term and whether reference log-probabilities are precomputed (TRL's defaults).</summary>
    public DpoOptions Dpo { get; set; } = new();

    internal override IEnumerable<(string Option, string? Value)> ColumnOptions =>
        [(nameof(PromptColumnName), PromptColumnName), (nameof(ChosenColumnName), ChosenColumnName), (nameof(RejectedColumnName), RejectedColumnName),
         (nameof(OutputColumnName), OutputColumnName)];

    internal override void Validate()
    {
        base.Validate();
        ArgumentNullException.ThrowIfNull(Dpo, nameof(Dpo));
        Dpo.Validate();
    }
}
