using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Lora;

/// <summary>
/// LoRA applied to a model (HF PEFT's <c>LoraModel</c>): adapters on the target linear layers, base weights frozen.
/// Works on any TorchSharp module whose linear layers are invoked with <c>call()</c> (all of this library's
/// architectures); the model object stays the same and keeps its HF parameter names. Applying again with another
/// adapter name adds a second adapter beside the first; each can be enabled or disabled on its own.
/// </summary>
public sealed class LoraModel : PeftModel
{
    private readonly List<LoraAdapter> _adapters;

    private LoraModel(nn.Module model, LoraConfig config, string adapterName, List<LoraAdapter> adapters) : base(model, config, adapterName) =>
        _adapters = adapters;

    public new LoraConfig Config => (LoraConfig)base.Config;
    public IReadOnlyList<LoraAdapter> Adapters => _adapters;

    /// <summary>Query and value projections: LoRA's original targets (PEFT's defaults per family).</summary>
    public static IReadOnlyList<string> DefaultTargets(nn.Module model) => model switch
    {
        Gpt2ForCausalLM => ["c_attn"],
        BertModel or BertForSequenceClassification => ["query", "value"],
        _ => ["q_proj", "v_proj"],
    };

    /// <summary>
    /// Attaches adapters to every target layer of <paramref name="model"/> and freezes everything else (but the
    /// biases that <see cref="LoraConfig.Bias"/> names). Adapter A matrices are drawn from <paramref name="seed"/>.
    /// </summary>
    public static LoraModel Apply(nn.Module model, LoraConfig config, string adapterName = "default", long seed = 0) =>
        Scoped(model, () => ApplyCore(model, config, adapterName, seed));

    private static LoraModel ApplyCore(nn.Module model, LoraConfig config, string adapterName = "default", long seed = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        CheckAdapterName(adapterName);
        var targets = TargetModules.Select(model, config.TargetModules, config.TargetModulesRegex, DefaultTargets(model));

        var generator = new Generator((ulong)seed);
        var adapters = new List<LoraAdapter>();
        try
        {
            foreach (var (name, layer) in targets) adapters.Add(new LoraAdapter(name, layer, config, adapterName, generator));
        }
        catch
        {
            foreach (var a in adapters) a.Remove();
            throw;
        }
        // Only once every adapter is in place is the rest frozen: a failed Apply leaves the model as it was.
        foreach (var (_, p) in model.named_parameters()) p.requires_grad = false;
        var lora = new LoraModel(model, config, adapterName, adapters);
        foreach (var p in lora.TrainableTensors()) p.requires_grad = true;
        return lora;
    }

    internal static void CheckAdapterName(string adapterName)
    {
        if (string.IsNullOrWhiteSpace(adapterName) || adapterName.Contains('.'))
            throw new ArgumentException($"Adapter name '{adapterName}' must be non-empty and contain no '.'.", nameof(adapterName));
    }

    /// <summary>The adapter's own tensors and the biases <see cref="LoraConfig.Bias"/> trains, by model parameter name.</summary>
    private IEnumerable<Parameter> TrainableTensors() => AdapterStateDict().Values.OfType<Parameter>();

    public override void SetAdaptersEnabled(bool enabled)
    {
        foreach (var a in _adapters) a.Enabled = enabled;
    }

    public void Merge() { foreach (var a in _adapters) a.Merge(); }
    public void Unmerge() { foreach (var a in _adapters) a.Unmerge(); }

    /// <summary>Merges every adapter into its base weight, then removes the adapters: the model is a plain model again.</summary>
    public override void MergeAndUnload()
    {
        Merge();
        RemoveAdapters();
    }

    /// <summary>Removes the adapters without merging: merged ones are subtracted again, so the base model is restored.</summary>
    public override void Unload()
    {
        Unmerge();
        RemoveAdapters();
    }

    private void RemoveAdapters()
    {
        foreach (var a in _adapters) a.Remove();
        _adapters.Clear();
    }

    /// <summary>
    /// The adapter weights under PEFT's adapter-file names: <c>base_model.model.{module}.lora_A.weight</c> [r, in],
    /// <c>…lora_B.weight</c> [out, r], with DoRA <c>…lora_magnitude_vector</c> [out] (PEFT drops the ".weight" of its
    /// DoRA layer when saving), and the trained biases.
    /// </summary>
    public override Dictionary<string, Tensor> AdapterStateDict()
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var a in _adapters)
        {
            result[$"base_model.model.{a.ModuleName}.lora_A.weight"] = a.LoraA;
            result[$"base_model.model.{a.ModuleName}.lora_B.weight"] = a.LoraB;
            if (a.Magnitude is { } m) result[$"base_model.model.{a.ModuleName}.lora_magnitude_vector"] = m;
        }
        var adapted = _adapters.Select(a => a.ModuleName).ToHashSet(StringComparer.Ordinal);
        foreach (var (name, p) in Model.named_parameters())
        {
            if (!name.EndsWith(".bias", StringComparison.Ordinal) || name.Contains(".lora_", StringComparison.Ordinal)) continue;
            bool trains = Config.Bias switch
            {
                LoraBias.All => true,
                LoraBias.LoraOnly => adapted.Contains(name[..^".bias".Length]),
                _ => false,
            };
            if (trains) result[$"base_model.model.{name}"] = p;
        }
        return result;
    }

    /// <summary>Files this library wrote before it followed PEFT named the DoRA magnitude <c>…lora_magnitude_vector.weight</c>.</summary>
    internal override IEnumerable<string> FileKeyAliases(string key)
    {
        if (key.EndsWith(".lora_magnitude_vector", StringComparison.Ordinal)) yield return key + ".weight";
    }

    internal override void DescribeTargets(JsonObject config)
    {
        // Written as the exact module list PEFT then matches by suffix (or as the regex it was given).
        config["target_modules"] = Config.TargetModulesRegex is { } regex ? JsonValue.Create(regex)
            : new JsonArray(_adapters.Select(a => a.ModuleName.Split('.')[^1]).Distinct().Select(n => (JsonNode)JsonValue.Create(n)!).ToArray());
        config["fan_in_fan_out"] = _adapters.Any(a => a.FanInFanOut);
    }

    public override void Dispose()
    {
        foreach (var a in _adapters) a.Dispose();
    }
}
