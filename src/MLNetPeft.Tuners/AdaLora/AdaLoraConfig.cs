using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace MLNetPeft.Tuners.AdaLora;

/// <summary>
/// AdaLoRA (Zhang et al. 2023): LoRA in SVD form ΔW = P·Λ·Q whose rank budget shrinks from <see cref="InitR"/> per
/// layer to <see cref="TargetR"/> per layer on average, keeping the singular triplets with the highest importance
/// (smoothed sensitivity × uncertainty). HF PEFT's field names and defaults.
/// </summary>
public sealed class AdaLoraConfig : PeftConfig
{
    [JsonPropertyName("peft_type")] public override string PeftType => "ADALORA";
    /// <summary>Average rank per layer at the end.</summary>
    [JsonPropertyName("target_r")] public int TargetR { get; set; } = 8;
    /// <summary>Rank per layer at the start.</summary>
    [JsonPropertyName("init_r")] public int InitR { get; set; } = 12;
    /// <summary>Steps of warm-up at the full budget.</summary>
    [JsonPropertyName("tinit")] public int TInit { get; set; }
    /// <summary>Final steps at the target budget (the masks are then fixed).</summary>
    [JsonPropertyName("tfinal")] public int TFinal { get; set; }
    /// <summary>Steps between two budget allocations.</summary>
    [JsonPropertyName("deltaT")] public int DeltaT { get; set; } = 1;
    /// <summary>EMA factor of the sensitivity.</summary>
    [JsonPropertyName("beta1")] public double Beta1 { get; set; } = 0.85;
    /// <summary>EMA factor of the uncertainty.</summary>
    [JsonPropertyName("beta2")] public double Beta2 { get; set; } = 0.85;
    /// <summary>Weight of the orthogonality penalty ‖PᵀP − I‖ + ‖QQᵀ − I‖.</summary>
    [JsonPropertyName("orth_reg_weight")] public double OrthRegWeight { get; set; } = 0.5;
    /// <summary>Total training steps (required: the budget schedule depends on it).</summary>
    [JsonPropertyName("total_step")] public int? TotalStep { get; set; }
    /// <summary>Scale numerator: ΔW is multiplied by lora_alpha / rank (PEFT: lora_alpha if positive, else r).</summary>
    [JsonPropertyName("lora_alpha")] public double LoraAlpha { get; set; } = 8;
    [JsonPropertyName("lora_dropout")] public double LoraDropout { get; set; }
    /// <summary>Layers (names, regex or all-linear); null takes the family's query and value projections.</summary>
    [JsonPropertyName("target_modules")] public IReadOnlyList<string>? TargetModules { get; set; }
    [JsonIgnore] public string? TargetModulesRegex { get; set; }
    /// <summary>PEFT's r, inherited from LoraConfig; AdaLoRA itself starts every layer at <see cref="InitR"/>.</summary>
    [JsonPropertyName("r")] public int R { get; set; } = 8;
    /// <summary>PEFT's init_lora_weights: true (E starts at zero, so a fresh adapter changes nothing) or false (E random, for tests).</summary>
    [JsonPropertyName("init_lora_weights")] public bool InitLoraWeights { get; set; } = true;
    /// <summary>Per layer (PEFT's key of its lora_E), which of the init_r triplets are kept; set by training, read on load.</summary>
    [JsonPropertyName("rank_pattern")] public Dictionary<string, bool[]>? RankPattern { get; set; }

    public override void Validate()
    {
        ValidateShape();
        if (TargetR <= 0 || TargetR > InitR) throw new ArgumentOutOfRangeException(nameof(TargetR), TargetR, $"target_r must be in [1, init_r = {InitR}]");
        if (TotalStep is not > 0) throw new ArgumentException("AdaLoRA needs total_step (the number of training steps) for its budget schedule.", nameof(TotalStep));
        if (TInit < 0 || TFinal < 0 || TInit + TFinal >= TotalStep)
            throw new ArgumentException($"tinit ({TInit}) + tfinal ({TFinal}) must leave steps for the budget to shrink within total_step ({TotalStep}).", nameof(TInit));
        if (DeltaT <= 0) throw new ArgumentOutOfRangeException(nameof(DeltaT), DeltaT, "deltaT must be positive");
        if (Beta1 is <= 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(Beta1), Beta1, "beta1 must be in (0, 1)");
        if (Beta2 is <= 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(Beta2), Beta2, "beta2 must be in (0, 1)");
        if (OrthRegWeight < 0) throw new ArgumentOutOfRangeException(nameof(OrthRegWeight), OrthRegWeight, "orth_reg_weight must be non-negative");
        if (LoraDropout is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(LoraDropout), LoraDropout, "lora_dropout must be in [0, 1)");
        if (TargetModules is not null && TargetModulesRegex is not null)
            throw new ArgumentException("Give target modules either as names or as a regular expression, not both.", nameof(TargetModules));
    }

    /// <summary>What applying the layers needs (loading an adapter for inference needs no budget schedule).</summary>
    internal void ValidateShape()
    {
        if (InitR is <= 0 or > 1 << 16) throw new ArgumentOutOfRangeException(nameof(InitR), InitR, "init_r must be in [1, 65536]");
        if (LoraDropout is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(LoraDropout), LoraDropout, "lora_dropout must be in [0, 1)");
        if (TargetModules is not null && TargetModulesRegex is not null)
            throw new ArgumentException("Give target modules either as names or as a regular expression, not both.", nameof(TargetModules));
    }

    /// <summary>PEFT's scaling: lora_alpha when positive, otherwise r.</summary>
    [JsonIgnore] public double Scaling => LoraAlpha > 0 ? LoraAlpha : InitR;

    internal override JsonObject ToJson() => new()
    {
        ["target_r"] = TargetR, ["init_r"] = InitR, ["tinit"] = TInit, ["tfinal"] = TFinal, ["deltaT"] = DeltaT,
        ["beta1"] = Beta1, ["beta2"] = Beta2, ["orth_reg_weight"] = OrthRegWeight, ["total_step"] = TotalStep,
        ["lora_alpha"] = LoraAlpha, ["lora_dropout"] = LoraDropout, ["r"] = R, ["bias"] = "none", ["init_lora_weights"] = InitLoraWeights,
        ["alpha_pattern"] = new JsonObject(), ["layers_to_transform"] = null, ["layers_pattern"] = null,
    };
}
