using System.Globalization;
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
    public const string ConfigFileName = "adapter_config.json";
    public const string WeightsFileName = "adapter_model.safetensors";
    private const string Prefix = "base_model.model.";

    /// <summary>Config fields this library reads; PEFT writes many more, which are accepted but not used.</summary>
    private static readonly HashSet<string> UnderstoodFields =
    [
        "peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "init_lora_weights", "fan_in_fan_out",
        "task_type", "base_model_name_or_path", "inference_mode", "revision", "modules_to_save", "use_dora", "rank_pattern", "alpha_pattern",
        "layers_to_transform", "layers_pattern",
    ];

    /// <summary>Writes the adapter of <paramref name="lora"/> (each file atomically).</summary>
    public static void Save(string folder, LoraModel lora, string? baseModelNameOrPath = null, string taskType = "CAUSAL_LM")
    {
        Directory.CreateDirectory(folder);
        var c = lora.Config;
        var config = new JsonObject
        {
            ["peft_type"] = "LORA",
            ["task_type"] = taskType,
            ["base_model_name_or_path"] = baseModelNameOrPath,
            ["r"] = c.R,
            ["lora_alpha"] = c.LoraAlpha,
            ["lora_dropout"] = c.LoraDropout,
            // Written as the exact module list PEFT then matches by suffix (or as the regex it was given).
            ["target_modules"] = c.TargetModulesRegex is { } regex ? JsonValue.Create(regex)
                : new JsonArray(lora.Adapters.Select(a => (JsonNode)JsonValue.Create(a.ModuleName.Split('.')[^1])!).DistinctBy(n => n.GetValue<string>()).ToArray()),
            ["bias"] = c.Bias switch { LoraBias.All => "all", LoraBias.LoraOnly => "lora_only", _ => "none" },
            ["fan_in_fan_out"] = lora.Adapters.Any(a => a.FanInFanOut),
            ["use_rslora"] = c.UseRsLora,
            ["init_lora_weights"] = c.InitLoraWeights == "gaussian" ? JsonValue.Create("gaussian") : JsonValue.Create(true),
            ["use_dora"] = false,
            ["inference_mode"] = true,
            ["modules_to_save"] = null,
        };
        AtomicFile.WriteAllText(Path.Combine(folder, ConfigFileName), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        SafetensorsWriter.Save(Path.Combine(folder, WeightsFileName), lora.AdapterStateDict(), new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>Reads a PEFT LoRA <c>adapter_config.json</c>; <paramref name="unusedFields"/> lists the fields this library does not act on.</summary>
    public static LoraConfig ReadConfig(string folder, out IReadOnlyList<string> unusedFields)
    {
        var path = Path.Combine(folder, ConfigFileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"'{folder}' has no {ConfigFileName}.", path);
        JsonObject json;
        try { json = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"'{path}' is not a JSON object."); }
        catch (JsonException e) { throw new InvalidDataException($"'{path}' is not well-formed JSON: {e.Message}", e); }

        string? peftType = json["peft_type"]?.GetValue<string>();
        if (peftType != "LORA")
            throw new NotSupportedException($"'{path}' holds a '{peftType}' adapter; this reader handles LORA.");
        if (json["use_dora"]?.GetValue<bool>() == true)
            throw new NotSupportedException($"'{path}' is a DoRA adapter (use_dora), which this reader does not handle.");
        var config = new LoraConfig
        {
            R = Number(json, "r", path, 8),
            LoraAlpha = Number(json, "lora_alpha", path, 8.0),
            LoraDropout = Number(json, "lora_dropout", path, 0.0),
            UseRsLora = json["use_rslora"]?.GetValue<bool>() ?? false,
            Bias = (json["bias"]?.GetValue<string>() ?? "none") switch
            {
                "none" => LoraBias.None, "all" => LoraBias.All, "lora_only" => LoraBias.LoraOnly,
                var b => throw new InvalidDataException($"'{path}': bias '{b}' is not none, all or lora_only."),
            },
            InitLoraWeights = json["init_lora_weights"] is JsonValue v && v.TryGetValue<string>(out var init) ? init : "default",
        };
        switch (json["target_modules"])
        {
            case JsonArray list: config.TargetModules = list.Select(t => t!.GetValue<string>()).ToList(); break;
            case JsonValue single when single.TryGetValue<string>(out var pattern): config.TargetModulesRegex = pattern; break;
            case null: break;
            default: throw new InvalidDataException($"'{path}': target_modules must be a list of names or a regular expression.");
        }
        config.Validate();
        unusedFields = json.Where(kv => !UnderstoodFields.Contains(kv.Key)).Select(kv => kv.Key).Order(StringComparer.Ordinal).ToList();
        return config;
    }

    /// <summary>
    /// Attaches the adapter in <paramref name="folder"/> to <paramref name="model"/>: every LoRA weight must match a
    /// layer of the model with the right shape. Other saved tensors (for example a classification head listed in
    /// modules_to_save) are reported in <paramref name="unusedKeys"/>.
    /// </summary>
    public static LoraModel Load(nn.Module model, string folder, out IReadOnlyList<string> unusedKeys, string adapterName = "default")
    {
        var config = ReadConfig(folder, out _);
        var weightsPath = Path.Combine(folder, WeightsFileName);
        using var file = SafetensorsFile.Open(weightsPath);
        // Target exactly the modules the file has weights for.
        var modules = file.Tensors.Select(t => t.Name).Where(n => n.EndsWith(".lora_A.weight", StringComparison.Ordinal))
            .Select(n => n[Prefix.Length..^".lora_A.weight".Length]).ToList();
        if (modules.Count == 0) throw new InvalidDataException($"'{weightsPath}' holds no lora_A weights.");
        config.TargetModules = null;
        config.TargetModulesRegex = string.Join("|", modules.Select(System.Text.RegularExpressions.Regex.Escape));
        var lora = LoraModel.Apply(model, config, adapterName);
        try
        {
            var used = new HashSet<string>(StringComparer.Ordinal);
            foreach (var (key, target) in lora.AdapterStateDict())
            {
                if (!file.Contains(key)) throw new InvalidDataException($"'{weightsPath}' lacks '{key}'.");
                var info = file.Info(key);
                if (!info.Shape.SequenceEqual(target.shape))
                    throw new InvalidDataException($"'{weightsPath}': '{key}' has shape [{string.Join(", ", info.Shape)}] but the model's layer needs [{string.Join(", ", target.shape)}].");
                file.ReadInto(key, target);
                used.Add(key);
            }
            unusedKeys = file.Tensors.Select(t => t.Name).Where(n => !used.Contains(n)).ToList();
            return lora;
        }
        catch
        {
            lora.Unload();
            throw;
        }
    }

    private static T Number<T>(JsonObject json, string field, string path, T fallback)
    {
        if (json[field] is not JsonValue value) return fallback;
        try { return value.GetValue<T>(); }
        catch (Exception e) when (e is FormatException or InvalidOperationException)
        {
            // PEFT writes lora_alpha as an int or a float; accept either.
            if (value.TryGetValue<double>(out var d)) return (T)Convert.ChangeType(d, typeof(T), CultureInfo.InvariantCulture);
            throw new InvalidDataException($"'{path}': '{field}' is not a number.", e);
        }
    }
}
