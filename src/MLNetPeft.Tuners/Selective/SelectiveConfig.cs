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
/// LayerNorm tuning is saved as PEFT's <see cref="LayerNormType"/> (LN_TUNING: <c>base_model.model.{norm}.ln_tuning_layers.weight</c>
/// and <c>.bias</c>, the norms listed in target_modules), so PEFT loads it; BitFit, which PEFT lacks, as this library's
/// <see cref="BitFitType"/> with the trained tensors under <c>base_model.model.{parameter name}</c>.
/// </summary>
public sealed class SelectiveConfig : PeftConfig
{
    public const string BitFitType = "BITFIT";
    public const string LayerNormType = "LN_TUNING";
    /// <summary>What this library wrote for LayerNorm tuning before it used PEFT's format (read, never written).</summary>
    public const string LegacyLayerNormType = "LAYERNORM_TUNING";

    [JsonIgnore] public SelectiveTuning Tuning { get; set; } = SelectiveTuning.BitFit;
    [JsonPropertyName("peft_type")] public override string PeftType => Tuning == SelectiveTuning.BitFit ? BitFitType : LayerNormType;

    public override void Validate()
    {
        if (!Enum.IsDefined(Tuning)) throw new ArgumentOutOfRangeException(nameof(Tuning), Tuning, "not a SelectiveTuning value");
    }

    internal override JsonObject ToJson() => [];
}
