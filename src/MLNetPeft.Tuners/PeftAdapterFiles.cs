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
    /// <summary>PEFT's older weights file (torch.save's zip format), read weights-only when there is no safetensors file.</summary>
    public const string PyTorchWeightsFileName = "adapter_model.bin";
    internal const string KeyPrefix = "base_model.model.";

    /// <summary>
    /// Writes <paramref name="peft"/>'s config and weights into <paramref name="folder"/> (each file atomically): the
    /// method's weights under PEFT's names, the modules saved whole (<see cref="PeftModel.ModulesToSave"/>), and
    /// <paramref name="additionalTensors"/> (file names as given, e.g. what a loaded file carried that no layer took).
    /// An adapter loaded from a file writes that file's config fields back as they were.
    /// </summary>
    public static void Save(string folder, PeftModel peft, string? baseModelNameOrPath = null, string taskType = "CAUSAL_LM",
        IReadOnlyDictionary<string, Tensor>? additionalTensors = null)
    {
        ArgumentNullException.ThrowIfNull(peft);
        Directory.CreateDirectory(folder);
        using var scope = NewDisposeScope();   // what a method saves may be computed (AdaLoRA's kept triplets, prompt embeddings)
        // A loaded adapter writes back the config it came with (its trained state updated); a new one PEFT's fields.
        var config = peft.SourceConfig?.DeepClone().AsObject() ?? new JsonObject
        {
            ["peft_type"] = peft.Config.PeftType,
            ["task_type"] = taskType,
            ["base_model_name_or_path"] = baseModelNameOrPath,
            ["revision"] = null,
            ["auto_mapping"] = null,
            ["inference_mode"] = true,
            ["modules_to_save"] = peft.ModulesToSave.Count == 0 ? null : new JsonArray(peft.ModulesToSave.Select(m => (JsonNode)JsonValue.Create(m)!).ToArray()),
        };
        if (peft.SourceConfig is null)
        {
            foreach (var (key, value) in peft.Config.ToJson()) config[key] = value?.DeepClone();
            peft.DescribeTargets(config);
        }
        peft.DescribeTrainedState(config);
        var tensors = new Dictionary<string, Tensor>(peft.SavedStateDict(), StringComparer.Ordinal);
        foreach (var (key, value) in peft.ModulesToSaveStateDict()) tensors[key] = value;
        foreach (var (key, value) in additionalTensors ?? new Dictionary<string, Tensor>())
            if (!tensors.TryAdd(key, value)) throw new ArgumentException($"'{key}' is already one of the adapter's own tensors.", nameof(additionalTensors));
        AtomicFile.WriteAllText(Path.Combine(folder, ConfigFileName), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        SafetensorsWriter.Save(Path.Combine(folder, WeightsFileName), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>Fields every adapter_config.json may carry, whatever the method (PEFT writes them; they need no action here).</summary>
    private static readonly HashSet<string> CommonFields =
    [
        "peft_type", "task_type", "base_model_name_or_path", "inference_mode", "revision", "modules_to_save", "target_modules",
        "fan_in_fan_out", "feedforward_modules", "num_layers", "token_dim", "num_attention_heads", "rank_pattern", "alpha_pattern",
        "auto_mapping", "peft_version", "layers_to_transform", "layers_pattern", "exclude_modules", "tokenizer_name_or_path",
    ];

    /// <summary>
    /// Attaches the adapter in <paramref name="folder"/> to <paramref name="model"/>, whatever its method. Tensors of
    /// the file that belong to none of the method's layers are loaded into the model's parameter of the same name
    /// when it has one of the same shape (PEFT's modules_to_save, e.g. a classification head, which then trains and is
    /// saved with the adapter); the rest are reported in <paramref name="unusedKeys"/>. Config fields this library does
    /// not act on (newer PEFT options, say) are tolerated, kept for saving, and named through <paramref name="onWarning"/>.
    /// </summary>
    public static PeftModel Load(nn.Module model, string folder, out IReadOnlyList<string> unusedKeys, string adapterName = "default",
        Action<string>? onWarning = null)
    {
        var (json, path) = ReadConfigJson(folder);
        IReadOnlyList<string> unused = [];
        PeftModel peft;
        try
        {
            peft = PeftModel.Scoped(model, () =>
            {
                var loaded = Dispatch(model, folder, json, path, out var notTaken, adapterName);
                try
                {
                    unused = LoadModulesToSave(loaded, folder, notTaken);
                }
                catch
                {
                    loaded.Unload();
                    throw;
                }
                return loaded;
            });
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or KeyNotFoundException or OverflowException or JsonException)
        {
            // A value of the wrong type or out of range in the file, or a file that does not fit this model.
            throw new InvalidDataException($"The adapter in '{Path.GetFullPath(folder)}' cannot be loaded onto this {model.GetType().Name}: {e.Message}", e);
        }
        peft.SourceConfig = json;
        unusedKeys = unused;
        var known = new HashSet<string>(CommonFields.Concat(peft.Config.ToJson().Select(kv => kv.Key)), StringComparer.Ordinal);
        var unknown = json.Select(kv => kv.Key).Where(k => !known.Contains(k)).Order(StringComparer.Ordinal).ToList();
        if (unknown.Count > 0) onWarning?.Invoke($"'{path}': config fields this library does not use were kept but not acted on: {string.Join(", ", unknown)}.");
        return peft;
    }

    /// <summary>Whole-module tensors of the file (modules_to_save) go into the model's parameters of the same name and shape.</summary>
    private static IReadOnlyList<string> LoadModulesToSave(PeftModel peft, string folder, IReadOnlyList<string> notTaken)
    {
        if (notTaken.Count == 0) return notTaken;
        var parameters = peft.Model.named_parameters().ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);
        using var file = OpenWeights(folder);
        var unused = new List<string>();
        var modules = new List<string>();
        using var _ = no_grad();
        foreach (var key in notTaken)
        {
            var name = key.StartsWith(KeyPrefix, StringComparison.Ordinal) ? key[KeyPrefix.Length..] : null;
            if (name is null || !parameters.TryGetValue(name, out var target) || !file.ShapeOf(key).SequenceEqual(target.shape) || !name.Contains('.'))
            {
                unused.Add(key);
                continue;
            }
            file.ReadInto(key, target);
            var module = name[..name.LastIndexOf('.')];
            if (!modules.Contains(module)) modules.Add(module);
        }
        if (modules.Count > 0) peft.SaveModulesWhole([.. modules]);
        return unused;
    }

    private static PeftModel Dispatch(nn.Module model, string folder, JsonObject json, string path, out IReadOnlyList<string> unusedKeys, string adapterName)
    {
        return PeftType(json, path) switch
        {
            "LORA" => LoraAdapterFiles.LoadCore(model, folder, out unusedKeys, adapterName),
            "ADALORA" => AdaLoraModel.Load(model, folder, json, path, out unusedKeys, adapterName),
            "IA3" => Ia3Model.Load(model, folder, json, path, out unusedKeys, adapterName),
            SelectiveConfig.BitFitType or SelectiveConfig.LayerNormType or SelectiveConfig.LegacyLayerNormType => SelectiveModel.Load(model, folder, json, path, out unusedKeys),
            HoulsbyConfig.PeftTypeName => HoulsbyModel.Load(model, folder, json, path, out unusedKeys, adapterName),
            "PROMPT_TUNING" => PromptLearned(PromptTuningModel.Load(Promptable(model, path), folder, json, path, adapterName), folder, out unusedKeys),
            "P_TUNING" => PromptLearned(PTuningModel.Load(Promptable(model, path), folder, json, path, adapterName), folder, out unusedKeys),
            "PREFIX_TUNING" => PromptLearned(PrefixTuningModel.Load(Promptable(model, path), folder, json, path, adapterName), folder, out unusedKeys),
            var other => throw new NotSupportedException($"'{path}' holds a '{other}' adapter; this library reads LORA, ADALORA, IA3, LN_TUNING, PROMPT_TUNING, P_TUNING, " +
                $"PREFIX_TUNING, {HoulsbyConfig.PeftTypeName} and {SelectiveConfig.BitFitType}."),
        };
    }

    private static Architectures.IPromptableModel Promptable(nn.Module model, string path) =>
        model as Architectures.IPromptableModel ?? throw new NotSupportedException($"'{path}' is a prompt-learning adapter, which applies to causal language models and BERT encoders, not to a {model.GetType().Name}.");

    // Prompt-learning files hold prompt_embeddings, which the loader has read; anything else is left over.
    private static PeftModel PromptLearned(PromptLearningModel model, string folder, out IReadOnlyList<string> unusedKeys)
    {
        using var file = OpenWeights(folder);
        unusedKeys = file.TensorNames.Where(n => n != PromptLearningModel.EmbeddingsKey).Order(StringComparer.Ordinal).ToList();
        return model;
    }

    /// <summary>The adapter's weights file: <c>adapter_model.safetensors</c>, else PEFT's older <c>adapter_model.bin</c> (read weights-only).</summary>
    public static ITensorReader OpenWeights(string folder)
    {
        var safetensors = Path.Combine(folder, WeightsFileName);
        if (File.Exists(safetensors)) return SafetensorsFile.Open(safetensors);
        var bin = Path.Combine(folder, PyTorchWeightsFileName);
        if (File.Exists(bin)) return TorchCheckpointFile.Open(bin);
        throw new FileNotFoundException($"Adapter folder '{Path.GetFullPath(folder)}' has neither {WeightsFileName} nor {PyTorchWeightsFileName}.", safetensors);
    }

    internal static (JsonObject Json, string Path) ReadConfigJson(string folder)
    {
        var path = Path.Combine(folder, ConfigFileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"'{folder}' has no {ConfigFileName}.", path);
        if (new FileInfo(path).Length > 1 << 20) throw new InvalidDataException($"'{path}' is larger than the 1 MB an adapter config may be.");
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
        using var file = OpenWeights(folder);
        var used = new HashSet<string>(StringComparer.Ordinal);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        foreach (var (key, target) in peft.AdapterStateDict())
        {
            var stored = new[] { key }.Concat(peft.FileKeyAliases(key)).FirstOrDefault(file.Contains)
                ?? throw new InvalidDataException($"'{file.Source}' lacks '{key}'.");
            var shape = file.ShapeOf(stored);
            if (!shape.SequenceEqual(target.shape))
                throw new InvalidDataException($"'{file.Source}': '{stored}' has shape [{string.Join(", ", shape)}] but the model's layer needs [{string.Join(", ", target.shape)}].");
            file.ReadInto(stored, target);
            used.Add(stored);
        }
        return file.TensorNames.Where(n => !used.Contains(n)).Order(StringComparer.Ordinal).ToList();
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
        using var file = OpenWeights(folder);
        return file.TensorNames.Where(n => n.StartsWith(KeyPrefix, StringComparison.Ordinal) && n.EndsWith("." + suffix, StringComparison.Ordinal))
            .Select(n => n[KeyPrefix.Length..^(suffix.Length + 1)]).Order(StringComparer.Ordinal).ToList();
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

    /// <summary>A true/false config field (absent or null: false).</summary>
    internal static bool Flag(JsonObject json, string field, string path) => json[field] switch
    {
        null => false,
        JsonValue v when v.TryGetValue<bool>(out var b) => b,
        _ => throw new InvalidDataException($"'{path}': '{field}' must be true or false."),
    };

    /// <summary>A text config field, or null.</summary>
    internal static string? Text(JsonObject json, string field, string path) => json[field] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var text) => text,
        _ => throw new InvalidDataException($"'{path}': '{field}' must be a string."),
    };

    /// <summary>PEFT's rank_pattern / alpha_pattern: module-name patterns with a number each (absent or null: none).</summary>
    internal static Dictionary<string, T> Pattern<T>(JsonObject json, string field, string path, Func<JsonNode, T> read)
    {
        if (json[field] is null) return [];
        if (json[field] is not JsonObject map) throw new InvalidDataException($"'{path}': '{field}' must be an object of module patterns.");
        var result = new Dictionary<string, T>(StringComparer.Ordinal);
        foreach (var (key, value) in map)
        {
            try { result[key] = read(value ?? throw new FormatException()); }
            catch (Exception e) when (e is FormatException or InvalidOperationException)
            {
                throw new InvalidDataException($"'{path}': {field}['{key}'] is not a number.", e);
            }
        }
        return result;
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
