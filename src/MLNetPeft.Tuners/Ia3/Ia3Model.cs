using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Ia3;

/// <summary>IA3 applied to a model (HF PEFT's <c>IA3Model</c>): the rescaling vectors train, everything else is frozen.</summary>
public sealed class Ia3Model : PeftModel
{
    private readonly List<Ia3Layer> _layers;

    private Ia3Model(nn.Module model, Ia3Config config, string adapterName, List<Ia3Layer> layers) : base(model, config, adapterName) => _layers = layers;

    public new Ia3Config Config => (Ia3Config)base.Config;
    public IReadOnlyList<Ia3Layer> Layers => _layers;

    /// <summary>Keys, values and the FFN output projection: PEFT's IA3 defaults per family.</summary>
    public static IReadOnlyList<string> DefaultTargets(nn.Module model) => model switch
    {
        Gpt2ForCausalLM => ["c_attn", "mlp.c_proj"],
        BertModel or BertForSequenceClassification => ["key", "value", "output.dense"],
        _ => ["k_proj", "v_proj", "down_proj"],
    };

    /// <summary>The feed-forward targets (input rescaled) among the defaults.</summary>
    public static IReadOnlyList<string> DefaultFeedforward(nn.Module model) => model switch
    {
        Gpt2ForCausalLM => ["mlp.c_proj"],
        BertModel or BertForSequenceClassification => ["output.dense"],
        _ => ["down_proj"],
    };

    public static Ia3Model Apply(nn.Module model, Ia3Config config, string adapterName = "default", long seed = 0) =>
        Scoped(model, () => ApplyCore(model, config, adapterName, seed));

    private static Ia3Model ApplyCore(nn.Module model, Ia3Config config, string adapterName = "default", long seed = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Lora.LoraModel.CheckAdapterName(adapterName);
        var targets = TargetModules.Select(model, config.TargetModules, config.TargetModulesRegex, DefaultTargets(model));
        var feedforward = config.FeedforwardModules ?? DefaultFeedforward(model);
        var generator = new Generator((ulong)seed);
        var layers = new List<Ia3Layer>();
        try
        {
            foreach (var (name, layer) in targets)
                layers.Add(new Ia3Layer(name, layer, feedforward.Any(f => TargetModules.Matches(name, f)), config, adapterName, generator));
        }
        catch
        {
            foreach (var l in layers) l.Remove();
            throw;
        }
        foreach (var (_, p) in model.named_parameters()) p.requires_grad = false;
        foreach (var l in layers) l.Scale.requires_grad = true;
        return new Ia3Model(model, config, adapterName, layers);
    }

    internal static Ia3Model Load(nn.Module model, string folder, JsonObject json, string path, out IReadOnlyList<string> unusedKeys, string adapterName)
    {
        var modules = PeftAdapterFiles.ModulesWith(folder, "ia3_l");
        if (modules.Count == 0) throw new InvalidDataException($"'{Path.Combine(folder, PeftAdapterFiles.WeightsFileName)}' holds no ia3_l vectors.");
        var (feedforward, feedforwardRegex) = PeftAdapterFiles.Targets(json, "feedforward_modules", path);
        if (feedforwardRegex is { } pattern)
        {
            var regex = TargetModules.FullNamePattern(pattern, "feedforward_modules");
            feedforward = modules.Where(m => TargetModules.IsMatch(regex, m, "feedforward_modules")).ToList();
        }
        var config = new Ia3Config
        {
            TargetModulesRegex = PeftAdapterFiles.ExactModules(modules),
            FeedforwardModules = feedforward ?? [],
            InitIa3Weights = json["init_ia3_weights"]?.GetValue<bool>() ?? true,
        };
        return PeftAdapterFiles.FillFrom(Apply(model, config, adapterName), folder, out unusedKeys);
    }

    public override Dictionary<string, Tensor> AdapterStateDict() =>
        _layers.ToDictionary(l => $"{PeftAdapterFiles.KeyPrefix}{l.ModuleName}.ia3_l", l => (Tensor)l.Scale, StringComparer.Ordinal);

    public override void SetAdaptersEnabled(bool enabled)
    {
        foreach (var l in _layers) l.Enabled = enabled;
    }

    public void Merge() { foreach (var l in _layers) l.Merge(); }
    public void Unmerge() { foreach (var l in _layers) l.Unmerge(); }

    public override void MergeAndUnload()
    {
        Merge();
        foreach (var l in _layers) l.Remove();
        _layers.Clear();
    }

    public override void Unload()
    {
        Unmerge();
        foreach (var l in _layers) l.Remove();
        _layers.Clear();
    }

    internal override void DescribeTargets(JsonObject config)
    {
        // Full module names: a suffix such as GPT-2's "c_proj" would also match the attention projection.
        config["target_modules"] = new JsonArray(_layers.Select(l => (JsonNode)JsonValue.Create(l.ModuleName)!).ToArray());
        config["feedforward_modules"] = new JsonArray(_layers.Where(l => l.IsFeedforward).Select(l => (JsonNode)JsonValue.Create(l.ModuleName)!).ToArray());
        config["fan_in_fan_out"] = _layers.Any(l => l.FanInFanOut);
    }
}
