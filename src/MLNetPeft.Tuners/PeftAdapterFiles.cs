using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using MLNetPeft.Checkpoints;
using MLNetPeft.Tuners.AdaLora;
using MLNetPeft.Tuners.Houlsby;
using MLNetPeft.Tuners.Ia3;
using MLNetPeft.Tuners.Lora;
using MLNetPeft.Tuners.PrefixTuning;
using MLNetPeft.Tuners.PromptTuning;
using MLNetPeft.Tuners.PTuning;
using MLNetPeft.Tuners.Selective;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners;

/// <summary>
/// HF PEFT's adapter folder: <c>adapter_config.json</c> (PEFT's field names, <c>peft_type</c> says the method) and
/// <c>adapter_model.safetensors</c> with keys <c>base_model.model.{module}.{method weight}</c>. Adapters written here
/// load in Python with <c>PeftModel.from_pretrained</c> (for the methods PEFT has), and PEFT's adapters load here.
/// </summary>
public static class PeftAdapterFiles
{
    public const string ConfigFileName = "adapter_config.json";
    public const string WeightsFileName = "adapter_model.safetensors";
    internal const string KeyPrefix = "base_model.model.";

    /// <summary>Writes <paramref name="peft"/>'s config and weights into <paramref name="folder"/> (each file atomically).</summary>
    public static void Save(string folder, PeftModel peft, string? baseModelNameOrPath = null, string taskType = "CAUSAL_LM")
    {
        ArgumentNullException.ThrowIfNull(peft);
        Directory.CreateDirectory(folder);
        using var scope = NewDisposeScope();   // what a method saves may be computed (AdaLoRA's kept triplets, prompt embeddings)
        var config = new JsonObject
        {
            ["peft_type"] = peft.Config.PeftType,
            ["task_type"] = taskType,
            ["base_model_name_or_path"] = baseModelNameOrPath,
            ["inference_mode"] = true,
            ["modules_to_save"] = null,
        };
        foreach (var (key, value) in peft.Config.ToJson()) config[key] = value?.DeepClone();
        peft.DescribeTargets(config);
        AtomicFile.WriteAllText(Path.Combine(folder, ConfigFileName), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        SafetensorsWriter.Save(Path.Combine(folder, WeightsFileName), peft.SavedStateDict(), new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>Fields every adapter_config.json may carry, whatever the method (PEFT writes them; they need no action here).</summary>
    private static readonly HashSet<string> CommonFields =
    [
        "peft_type", "task_type", "base_model_name_or_path", "inference_mode", "revision", "modules_to_save", "target_modules",
        "fan_in_fan_out", "feedforward_modules", "num_layers", "token_dim", "num_attention_heads", "rank_pattern", "alpha_pattern",
        "auto_mapping", "peft_version", "layers_to_transform", "layers_pattern", "exclude_modules", "tokenizer_name_or_path",
    ];

    /// <summary>
    /// Attaches the adapter in <paramref name="folder"/> to <paramref name="model"/>, whatever its method; tensors of
    /// the file that no layer takes (e.g. a head in modules_to_save) are reported in <paramref name="unusedKeys"/>.
    /// Config fields this library does not act on (newer PEFT options, say) are tolerated and named through
    /// <paramref name="onWarning"/>.
    /// </summary>
    public static PeftModel Load(nn.Module model, string folder, out IReadOnlyList<string> unusedKeys, string adapterName = "default",
        Action<string>? onWarning = null)
    {
        var (json, path) = ReadConfigJson(folder);
        IReadOnlyList<string> unused = [];
        var peft = PeftModel.Scoped(model, () =>
        {
            var loaded = Dispatch(model, folder, json, path, out var notTaken, adapterName);
            unused = notTaken;
            return loaded;
        });
        unusedKeys = unused;
        var known = new HashSet<string>(CommonFields.Concat(peft.Config.ToJson().Select(kv => kv.Key)), StringComparer.Ordinal);
        var unknown = json.Select(kv => kv.Key).Where(k => !known.Contains(k)).Order(StringComparer.Ordinal).ToList();
        if (unknown.Count > 0) onWarning?.Invoke($"'{path}': config fields this library does not use were ignored: {string.Join(", ", unknown)}.");
        return peft;
    }

    private static PeftModel Dispatch(nn.Module model, string folder, JsonObject json, string path, out IReadOnlyList<string> unusedKeys, string adapterName)
    {
        return PeftType(json, path) switch
        {
            "LORA" => LoraAdapterFiles.Load(model, folder, out unusedKeys, adapterName),
            "ADALORA" => AdaLoraModel.Load(model, folder, json, path, out unusedKeys, adapterName),
            "IA3" => Ia3Model.Load(model, folder, json, path, out unusedKeys, adapterName),
            SelectiveConfig.BitFitType or SelectiveConfig.LayerNormType => SelectiveModel.Load(model, folder, json, path, out unusedKeys),
            HoulsbyConfig.PeftTypeName => HoulsbyModel.Load(model, folder, json, path, out unusedKeys, adapterName),
            "PROMPT_TUNING" => PromptLearned(PromptTuningModel.Load(Promptable(model, path), folder, json, path, adapterName), out unusedKeys),
            "P_TUNING" => PromptLearned(PTuningModel.Load(Promptable(model, path), folder, json, path, adapterName), out unusedKeys),
            "PREFIX_TUNING" => PromptLearned(PrefixTuningModel.Load(Promptable(model, path), folder, json, path, adapterName), out unusedKeys),
            var other => throw new NotSupportedException($"'{path}' holds a '{other}' adapter; this library reads LORA, ADALORA, IA3, PROMPT_TUNING, P_TUNING, " +
                $"PREFIX_TUNING, {HoulsbyConfig.PeftTypeName}, {SelectiveConfig.BitFitType} and {SelectiveConfig.LayerNormType}."),
        };
    }

    private static Architectures.IPromptableModel Promptable(nn.Module model, string path) =>
        model as Architectures.IPromptableModel ?? throw new NotSupportedException($"'{path}' is a prompt-learning adapter, which applies to causal language models and BERT encoders, not to a {model.GetType().Name}.");

    // Prompt-learning files hold one tensor, prompt_embeddings, which the loader has read.
    private static PeftModel PromptLearned(PromptLearningModel model, out IReadOnlyList<string> unusedKeys)
    {
        unusedKeys = [];
        return model;
    }

    internal static (JsonObject Json, string Path) ReadConfigJson(string folder)
    {
        var path = Path.Combine(folder, ConfigFileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"'{folder}' has no {ConfigFileName}.", path);
        try
        {
            return (JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"'{path}' is not a JSON object."), path);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"'{path}' is not well-formed JSON: {e.Message}", e);
        }
    }

    internal static string? PeftType(JsonObject json, string path) =>
        json["peft_type"] is JsonValue v && v.TryGetValue<string>(out var type) ? type : throw new InvalidDataException($"'{path}' has no peft_type.");

    /// <summary>
    /// Copies the weights file's tensors into <paramref name="peft"/>'s adapter tensors, checking that each exists
    /// with the right shape; returns the file's tensors nothing took.
    /// </summary>
    internal static IReadOnlyList<string> ReadWeights(PeftModel peft, string folder)
    {
        var weightsPath = Path.Combine(folder, WeightsFileName);
        using var file = SafetensorsFile.Open(weightsPath);
        var used = new HashSet<string>(StringComparer.Ordinal);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        foreach (var (key, target) in peft.AdapterStateDict())
        {
            if (!file.Contains(key)) throw new InvalidDataException($"'{weightsPath}' lacks '{key}'.");
            var info = file.Info(key);
            if (!info.Shape.SequenceEqual(target.shape))
                throw new InvalidDataException($"'{weightsPath}': '{key}' has shape [{string.Join(", ", info.Shape)}] but the model's layer needs [{string.Join(", ", target.shape)}].");
            file.ReadInto(key, target);
            used.Add(key);
        }
        return file.Tensors.Select(t => t.Name).Where(n => !used.Contains(n)).ToList();
    }

    /// <summary>Fills a freshly applied <paramref name="peft"/> from the folder's weights; on failure it is unloaded again.</summary>
    internal static T FillFrom<T>(T peft, string folder, out IReadOnlyList<string> unusedKeys) where T : PeftModel
    {
        try
        {
            unusedKeys = ReadWeights(peft, folder);
            return peft;
        }
        catch
        {
            peft.Unload();
            throw;
        }
    }

    /// <summary>The module names that carry a tensor named <c>…{module}.{suffix}</c> in the weights file.</summary>
    internal static List<string> ModulesWith(string folder, string suffix)
    {
        using var file = SafetensorsFile.Open(Path.Combine(folder, WeightsFileName));
        return file.Tensors.Select(t => t.Name).Where(n => n.StartsWith(KeyPrefix, StringComparison.Ordinal) && n.EndsWith("." + suffix, StringComparison.Ordinal))
            .Select(n => n[KeyPrefix.Length..^(suffix.Length + 1)]).ToList();
    }

    /// <summary>A numeric config field (PEFT writes e.g. lora_alpha as an int or a float; either is accepted).</summary>
    internal static T Number<T>(JsonObject json, string field, string path, T fallback)
    {
        if (json[field] is not JsonValue value) return fallback;
        try { return value.GetValue<T>(); }
        catch (Exception e) when (e is FormatException or InvalidOperationException)
        {
            if (value.TryGetValue<double>(out var d)) return (T)Convert.ChangeType(d, typeof(T), CultureInfo.InvariantCulture);
            throw new InvalidDataException($"'{path}': '{field}' is not a number.", e);
        }
    }

    /// <summary>PEFT's target_modules: a list of names, or one string that is a regular expression.</summary>
    internal static (IReadOnlyList<string>? Names, string? Regex) Targets(JsonObject json, string field, string path) => json[field] switch
    {
        JsonArray list => (list.Select(t => t!.GetValue<string>()).ToList(), null),
        JsonValue single when single.TryGetValue<string>(out var pattern) => (null, pattern),
        null => (null, null),
        _ => throw new InvalidDataException($"'{path}': {field} must be a list of names or a regular expression."),
    };

    /// <summary>A regular expression matching exactly the given module names.</summary>
    internal static string ExactModules(IEnumerable<string> modules) => string.Join("|", modules.Select(System.Text.RegularExpressions.Regex.Escape));
}
