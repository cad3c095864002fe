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
    /// <summary>
    /// "default" (A Kaiming-uniform, B zero) or "gaussian" (A normal with std 1/r, B zero), which both start with ΔW = 0;
    /// or "false" (PEFT's init_lora_weights=False: A and B both as nn.Linear initialises them, so ΔW ≠ 0 from the start).
    /// </summary>
    [JsonPropertyName("init_lora_weights")] public string InitLoraWeights { get; set; } = "default";

    /// <summary>
    /// DoRA: W' = m · (W + s·B·A) / ‖W + s·B·A‖ per output row, with a trainable magnitude m [out] initialised to ‖W‖
    /// and the norm treated as a constant in the backward pass (the paper's §4.3, as PEFT does).
    /// </summary>
    [JsonPropertyName("use_dora")] public bool UseDora { get; set; }

    /// <summary>
    /// Ranks for some modules other than <see cref="R"/> (PEFT's rank_pattern): a key is a regular expression that must
    /// match the end of a module's full name after a dot (PEFT's get_pattern_key), e.g. "q_proj" or "layers\.0\.self_attn\.q_proj".
    /// </summary>
    [JsonPropertyName("rank_pattern")] public Dictionary<string, int> RankPattern { get; set; } = [];
    /// <summary>lora_alpha for some modules other than <see cref="LoraAlpha"/> (PEFT's alpha_pattern), keys as in <see cref="RankPattern"/>.</summary>
    [JsonPropertyName("alpha_pattern")] public Dictionary<string, double> AlphaPattern { get; set; } = [];

    /// <summary>The scaling of modules that no pattern names.</summary>
    [JsonIgnore] public double Scaling => ScalingOf(R, LoraAlpha);

    /// <summary>The rank of the module <paramref name="moduleName"/> (its rank_pattern entry, else r).</summary>
    public int RankFor(string moduleName) => PatternKey(RankPattern.Keys, moduleName) is { } key ? RankPattern[key] : R;

    /// <summary>The lora_alpha of the module <paramref name="moduleName"/> (its alpha_pattern entry, else lora_alpha).</summary>
    public double AlphaFor(string moduleName) => PatternKey(AlphaPattern.Keys, moduleName) is { } key ? AlphaPattern[key] : LoraAlpha;

    /// <summary>The scaling of the module <paramref name="moduleName"/>: its alpha over its r (or √r with rsLoRA).</summary>
    public double ScalingFor(string moduleName) => ScalingOf(RankFor(moduleName), AlphaFor(moduleName));

    private double ScalingOf(int r, double alpha) => UseRsLora ? alpha / Math.Sqrt(r) : alpha / r;

    /// <summary>PEFT's get_pattern_key: the first key whose pattern matches the module name's end after a dot.</summary>
    internal static string? PatternKey(IEnumerable<string> keys, string moduleName) =>
        keys.FirstOrDefault(k => Tuners.TargetModules.IsMatch(Tuners.TargetModules.FullNamePattern($"(.*\\.)?({k})", "rank_pattern/alpha_pattern"), moduleName, "rank_pattern/alpha_pattern"));

    public override void Validate()
    {
        if (R is <= 0 or > 1 << 16) throw new ArgumentOutOfRangeException(nameof(R), R, "LoRA rank r must be in [1, 65536]");
        if (!(LoraAlpha > 0)) throw new ArgumentOutOfRangeException(nameof(LoraAlpha), LoraAlpha, "lora_alpha must be positive");
        if (LoraDropout is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(LoraDropout), LoraDropout, "lora_dropout must be in [0, 1)");
        if (InitLoraWeights is not ("default" or "gaussian" or "false"))
            throw new ArgumentException($"init_lora_weights '{InitLoraWeights}' is not supported; use 'default', 'gaussian' or 'false'.", nameof(InitLoraWeights));
        if (TargetModules is not null && TargetModulesRegex is not null)
            throw new ArgumentException("Give target modules either as names or as a regular expression, not both.", nameof(TargetModules));
        foreach (var (key, r) in RankPattern ?? [])
            if (r is <= 0 or > 1 << 16) throw new ArgumentOutOfRangeException(nameof(RankPattern), r, $"rank_pattern['{key}'] must be in [1, 65536]");
        foreach (var (key, alpha) in AlphaPattern ?? [])
            if (!(alpha > 0)) throw new ArgumentOutOfRangeException(nameof(AlphaPattern), alpha, $"alpha_pattern['{key}'] must be positive");
    }

    internal override JsonObject ToJson() => new()
    {
        ["r"] = R,
        ["lora_alpha"] = LoraAlpha,
        ["lora_dropout"] = LoraDropout,
        ["bias"] = Bias switch { LoraBias.All => "all", LoraBias.LoraOnly => "lora_only", _ => "none" },
        ["use_rslora"] = UseRsLora,
        ["use_dora"] = UseDora,
        ["init_lora_weights"] = InitLoraWeights switch { "gaussian" => JsonValue.Create("gaussian"), "false" => JsonValue.Create(false), _ => JsonValue.Create(true) },
        ["rank_pattern"] = new JsonObject(RankPattern.Select(kv => new KeyValuePair<string, JsonNode?>(kv.Key, kv.Value))),
        ["alpha_pattern"] = new JsonObject(AlphaPattern.Select(kv => new KeyValuePair<string, JsonNode?>(kv.Key, kv.Value))),
        ["fan_in_fan_out"] = false,
        ["layers_to_transform"] = null,
        ["layers_pattern"] = null,
    };
}
