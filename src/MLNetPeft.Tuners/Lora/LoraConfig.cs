using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace MLNetPeft.Tuners.Lora;

/// <summary>Which biases train alongside LoRA (PEFT's <c>bias</c>).</summary>
public enum LoraBias
{
    /// <summary>No bias trains (the default).</summary>
    None,
    /// <summary>Every bias of the model trains.</summary>
    All,
    /// <summary>Only the biases of layers that carry a LoRA adapter train.</summary>
    LoraOnly,
}

/// <summary>
/// LoRA (Hu et al. 2021) settings with HF PEFT's field names and defaults: the update of a frozen weight W is
/// ΔW = B·A·scaling with A [r, in], B [out, r], scaling = lora_alpha / r (or lora_alpha / √r with rsLoRA, Kalajdzievski 2023).
/// With <see cref="UseDora"/> the weight is decomposed into magnitude and direction (DoRA, Liu et al. 2024).
/// </summary>
public sealed class LoraConfig : PeftConfig
{
    /// <summary>The special <see cref="TargetModules"/> value meaning every linear layer except the output head.</summary>
    public const string AllLinear = Tuners.TargetModules.AllLinear;

    [JsonPropertyName("peft_type")] public override string PeftType => "LORA";
    /// <summary>Rank of the update (PEFT default 8).</summary>
    [JsonPropertyName("r")] public int R { get; set; } = 8;
    /// <summary>Scale numerator (PEFT default 8).</summary>
    [JsonPropertyName("lora_alpha")] public double LoraAlpha { get; set; } = 8;
    /// <summary>Dropout on the adapter's input (PEFT default 0).</summary>
    [JsonPropertyName("lora_dropout")] public double LoraDropout { get; set; }
    /// <summary>
    /// Module names (a module matches when its name equals one or ends with "." + one, e.g. "q_proj"), or
    /// <see cref="TargetModulesRegex"/>, or <see cref="AllLinear"/>. Null picks the family's default (query and value projections).
    /// </summary>
    [JsonPropertyName("target_modules")] public IReadOnlyList<string>? TargetModules { get; set; }
    /// <summary>A regular expression that must match a module's full name (PEFT's string form of target_modules).</summary>
    [JsonIgnore] public string? TargetModulesRegex { get; set; }
    [JsonPropertyName("bias")] public LoraBias Bias { get; set; } = LoraBias.None;
    /// <summary>Rank-stabilised scaling lora_alpha / √r instead of lora_alpha / r.</summary>
    [JsonPropertyName("use_rslora")] public bool UseRsLora { get; set; }
    /// <summary>"default" (A Kaiming-uniform, B zero) or "gaussian" (A normal with std 1/r, B zero); both start with ΔW = 0.</summary>
    [JsonPropertyName("init_lora_weights")] public string InitLoraWeights { get; set; } = "default";

    /// <summary>
    /// DoRA: W' = m · (W + s·B·A) / ‖W + s·B·A‖ per output row, with a trainable magnitude m [out] initialised to ‖W‖
    /// and the norm treated as a constant in the backward pass (the paper's §4.3, as PEFT does).
    /// </summary>
    [JsonPropertyName("use_dora")] public bool UseDora { get; set; }

    [JsonIgnore] public double Scaling => UseRsLora ? LoraAlpha / Math.Sqrt(R) : LoraAlpha / R;

    public override void Validate()
    {
        if (R <= 0) throw new ArgumentOutOfRangeException(nameof(R), R, "LoRA rank r must be positive");
        if (!(LoraAlpha > 0)) throw new ArgumentOutOfRangeException(nameof(LoraAlpha), LoraAlpha, "lora_alpha must be positive");
        if (LoraDropout is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(LoraDropout), LoraDropout, "lora_dropout must be in [0, 1)");
        if (InitLoraWeights is not ("default" or "gaussian"))
            throw new ArgumentException($"init_lora_weights '{InitLoraWeights}' is not supported; use 'default' or 'gaussian'.", nameof(InitLoraWeights));
        if (TargetModules is not null && TargetModulesRegex is not null)
            throw new ArgumentException("Give target modules either as names or as a regular expression, not both.", nameof(TargetModules));
    }

    internal override JsonObject ToJson() => new()
    {
        ["r"] = R,
        ["lora_alpha"] = LoraAlpha,
        ["lora_dropout"] = LoraDropout,
        ["bias"] = Bias switch { LoraBias.All => "all", LoraBias.LoraOnly => "lora_only", _ => "none" },
        ["use_rslora"] = UseRsLora,
        ["use_dora"] = UseDora,
        ["init_lora_weights"] = InitLoraWeights == "gaussian" ? JsonValue.Create("gaussian") : JsonValue.Create(true),
    };
}
