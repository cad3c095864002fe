using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace MLNetPeft.Tuners.Selective;

/// <summary>Which existing parameters selective tuning trains.</summary>
public enum SelectiveTuning
{
    /// <summary>BitFit (Ben Zaken et al. 2022): every bias term of the model.</summary>
    BitFit,
    /// <summary>LayerNorm tuning (Zhao et al. 2023): the scale (and bias) of every normalisation layer, LayerNorm or RMSNorm.</summary>
    LayerNorm,
}

/// <summary>
/// Selective tuning: no new weights; a chosen subset of the model's own parameters trains and the rest is frozen.
/// Saved as this library's own adapter types (<see cref="BitFitType"/>, <see cref="LayerNormType"/>), with the trained
/// tensors under <c>base_model.model.{parameter name}</c>; PEFT has no BitFit, and its LN_TUNING stores copies of the
/// norm layers differently.
/// </summary>
public sealed class SelectiveConfig : PeftConfig
{
    public const string BitFitType = "BITFIT";
    public const string LayerNormType = "LAYERNORM_TUNING";

    [JsonIgnore] public SelectiveTuning Tuning { get; set; } = SelectiveTuning.BitFit;
    [JsonPropertyName("peft_type")] public override string PeftType => Tuning == SelectiveTuning.BitFit ? BitFitType : LayerNormType;

    public override void Validate()
    {
        if (!Enum.IsDefined(Tuning)) throw new ArgumentOutOfRangeException(nameof(Tuning), Tuning, "not a SelectiveTuning value");
    }

    internal override JsonObject ToJson() => [];
}
