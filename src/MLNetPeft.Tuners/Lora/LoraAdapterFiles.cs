using System.Text.Json;
using System.Text.Json.Nodes;
using MLNetPeft.Checkpoints;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Lora;

/// <summary>
/// HF PEFT's adapter folder for LoRA: <c>adapter_config.json</c> (PEFT's field names) and
/// <c>adapter_model.safetensors</c> with keys <c>base_model.model.{module}.lora_A.weight</c> [r, in] and
/// <c>…lora_B.weight</c> [out, r]. Adapters written here load in Python with <c>PeftModel.from_pretrained</c>, and
/// PEFT's LoRA adapters load here.
/// </summary>
public static class LoraAdapterFiles
{
    public const string ConfigFileName = PeftAdapterFiles.ConfigFileName;
    public const string WeightsFileName = PeftAdapterFiles.WeightsFileName;

    /// <summary>Config fields this library reads; PEFT writes many more, which are accepted but not used.</summary>
    private static readonly HashSet<string> UnderstoodFields =
    [
        "peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "init_lora_weights", "fan_in_fan_out",
        "task_type", "base_model_name_or_path", "inference_mode", "revision", "modules_to_save", "use_dora", "rank_pattern", "alpha_pattern",
        "layers_to_transform", "layers_pattern",
    ];

    /// <summary>Writes the adapter of <paramref name="lora"/> (each file atomically).</summary>
    public static void Save(string folder, LoraModel lora, string? baseModelNameOrPath = null, string taskType = "CAUSAL_LM") =>
        PeftAdapterFiles.Save(folder, lora, baseModelNameOrPath, taskType);

    /// <summary>Reads a PEFT LoRA <c>adapter_config.json</c>; <paramref name="unusedFields"/> lists the fields this library does not act on.</summary>
    public static LoraConfig ReadConfig(string folder, out IReadOnlyList<string> unusedFields)
    {
        var (json, path) = PeftAdapterFiles.ReadConfigJson(folder);
        var peftType = PeftAdapterFiles.PeftType(json, path);
        if (peftType != "LORA")
            throw new NotSupportedException($"'{path}' holds a '{peftType}' adapter; this reader handles LORA.");
        var config = new LoraConfig
        {
            R = PeftAdapterFiles.Number(json, "r", path, 8),
            LoraAlpha = PeftAdapterFiles.Number(json, "lora_alpha", path, 8.0),
            LoraDropout = PeftAdapterFiles.Number(json, "lora_dropout", path, 0.0),
            UseRsLora = PeftAdapterFiles.Flag(json, "use_rslora", path),
            UseDora = PeftAdapterFiles.Flag(json, "use_dora", path),
            Bias = (PeftAdapterFiles.Text(json, "bias", path) ?? "none") switch
            {
                "none" => LoraBias.None, "all" => LoraBias.All, "lora_only" => LoraBias.LoraOnly,
                var b => throw new InvalidDataException($"'{path}': bias '{b}' is not none, all or lora_only."),
            },
            // How A and B were first drawn does not matter for weights read from the file; PEFT's other schemes ("pissa",
            // "olora", "loftq" …) are read as the default.
            InitLoraWeights = json["init_lora_weights"] switch
            {
                JsonValue v when v.TryGetValue<string>(out var init) && init == "gaussian" => "gaussian",
                JsonValue v when v.TryGetValue<bool>(out var flag) && !flag => "false",
                _ => "default",
            },
            RankPattern = PeftAdapterFiles.Pattern(json, "rank_pattern", path, n => n.GetValue<int>()),
            AlphaPattern = PeftAdapterFiles.Pattern(json, "alpha_pattern", path, n => n.GetValue<double>()),
        };
        (config.TargetModules, config.TargetModulesRegex) = PeftAdapterFiles.Targets(json, "target_modules", path);
        try { config.Validate(); }
        catch (ArgumentException e) { throw new InvalidDataException($"'{path}': {e.Message}", e); }
        unusedFields = json.Where(kv => !UnderstoodFields.Contains(kv.Key)).Select(kv => kv.Key).Order(StringComparer.Ordinal).ToList();
        return config;
    }

    /// <summary>
    /// Attaches the adapter in <paramref name="folder"/> to <paramref name="model"/>: every LoRA weight must match a
    /// layer of the model with the right shape (per-module ranks from rank_pattern). Other saved tensors that the model
    /// has a parameter for (a classification head in modules_to_save) are loaded into it; the rest are reported in
    /// <paramref name="unusedKeys"/>.
    /// </summary>
    public static LoraModel Load(nn.Module model, string folder, out IReadOnlyList<string> unusedKeys, string adapterName = "default") =>
        PeftAdapterFiles.Load(model, folder, out unusedKeys, adapterName) as LoraModel
            ?? throw new NotSupportedException($"'{folder}' does not hold a LORA adapter.");

    internal static LoraModel LoadCore(nn.Module model, string folder, out IReadOnlyList<string> unusedKeys, string adapterName)
    {
        var config = ReadConfig(folder, out _);
        // Target exactly the modules the file has weights for.
        var modules = PeftAdapterFiles.ModulesWith(folder, "lora_A.weight");
        if (modules.Count == 0) throw new InvalidDataException($"'{folder}' holds no lora_A weights in its {WeightsFileName} or adapter_model.bin.");
        // Each module's rank, as rank_pattern or r gives it, must be the stored one, before any adapter is allocated.
        using (var file = PeftAdapterFiles.OpenWeights(folder))
        {
            foreach (var module in modules)
            {
                var shape = file.ShapeOf($"{PeftAdapterFiles.KeyPrefix}{module}.lora_A.weight");
                if (shape.Length != 2 || shape[0] != config.RankFor(module))
                    throw new InvalidDataException($"'{file.Source}': the lora_A of '{module}' is [{string.Join(", ", shape)}] but adapter_config.json gives that module rank {config.RankFor(module)}.");
            }
        }
        config.TargetModules = null;
        config.TargetModulesRegex = PeftAdapterFiles.ExactModules(modules);
        return PeftAdapterFiles.FillFrom(LoraModel.Apply(model, config, adapterName), folder, out unusedKeys);
    }
}
