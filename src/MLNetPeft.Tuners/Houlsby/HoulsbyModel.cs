using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using MLNetPeft.Architectures;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Houlsby;

/// <summary>Houlsby adapters applied to a model: two bottlenecks per layer train, everything else is frozen.</summary>
public sealed class HoulsbyModel : PeftModel
{
    private readonly List<BottleneckAdapter> _adapters;

    private HoulsbyModel(nn.Module model, HoulsbyConfig config, string adapterName, List<BottleneckAdapter> adapters) : base(model, config, adapterName) =>
        _adapters = adapters;

    public new HoulsbyConfig Config => (HoulsbyConfig)base.Config;
    public IReadOnlyList<BottleneckAdapter> Adapters => _adapters;

    /// <summary>The output projections of the attention and feed-forward blocks of each family, as full-name patterns.</summary>
    public static (string Attention, string FeedForward) BlockOutputs(nn.Module model) => model switch
    {
        Gpt2ForCausalLM => (@"transformer\.h\.\d+\.attn\.c_proj", @"transformer\.h\.\d+\.mlp\.c_proj"),
        BertModel or BertForSequenceClassification => (@"(.+\.)?encoder\.layer\.\d+\.attention\.output\.dense", @"(.+\.)?encoder\.layer\.\d+\.output\.dense"),
        LlamaForCausalLM => (@"model\.layers\.\d+\.self_attn\.o_proj", @"model\.layers\.\d+\.mlp\.down_proj"),
        _ => throw new NotSupportedException($"Adapter tuning does not know where the blocks of a {model.GetType().Name} end."),
    };

    public static HoulsbyModel Apply(nn.Module model, HoulsbyConfig config, string adapterName = "default", long seed = 0) =>
        Scoped(model, () => ApplyCore(model, config, adapterName, seed));

    private static HoulsbyModel ApplyCore(nn.Module model, HoulsbyConfig config, string adapterName = "default", long seed = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Lora.LoraModel.CheckAdapterName(adapterName);
        var (attention, feedForward) = BlockOutputs(model);
        var patterns = new List<string>();
        if (config.AfterAttention) patterns.Add(attention);
        if (config.AfterFeedForward) patterns.Add(feedForward);
        var targets = TargetModules.LinearLayers(model).Where(l => patterns.Any(p => Regex.IsMatch(l.Name, $"^(?:{p})$", RegexOptions.None, TargetModules.MatchTimeout))).ToList();
        if (targets.Count == 0) throw new ArgumentException($"No attention or feed-forward output projection found in this {model.GetType().Name}.", nameof(model));
        var generator = new Generator((ulong)seed);
        var adapters = new List<BottleneckAdapter>();
        foreach (var (name, layer) in targets)
        {
            long hidden = TargetModules.Shape(layer, name, "Adapter tuning").Out;
            adapters.Add(new BottleneckAdapter(name, layer, hidden, config, adapterName, generator));
        }
        foreach (var (_, p) in model.named_parameters()) p.requires_grad = false;
        var houlsby = new HoulsbyModel(model, config, adapterName, adapters);
        foreach (var p in houlsby.AdapterStateDict().Values.OfType<Parameter>()) p.requires_grad = true;
        return houlsby;
    }

    internal static HoulsbyModel Load(nn.Module model, string folder, JsonObject json, string path, out IReadOnlyList<string> unusedKeys, string adapterName)
    {
        var config = new HoulsbyConfig
        {
            ReductionFactor = PeftAdapterFiles.Number(json, "reduction_factor", path, 16),
            NonLinearity = json["non_linearity"]?.GetValue<string>() ?? "relu",
            AfterAttention = json["mh_adapter"]?.GetValue<bool>() ?? true,
            AfterFeedForward = json["output_adapter"]?.GetValue<bool>() ?? true,
        };
        return PeftAdapterFiles.FillFrom(Apply(model, config, adapterName), folder, out unusedKeys);
    }

    public override Dictionary<string, Tensor> AdapterStateDict()
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var a in _adapters)
        {
            string prefix = $"{PeftAdapterFiles.KeyPrefix}{a.ModuleName}.adapter";
            result[$"{prefix}.down.weight"] = a.Down.weight!;
            result[$"{prefix}.down.bias"] = a.Down.bias!;
            result[$"{prefix}.up.weight"] = a.Up.weight!;
            result[$"{prefix}.up.bias"] = a.Up.bias!;
        }
        return result;
    }

    public override void SetAdaptersEnabled(bool enabled)
    {
        foreach (var a in _adapters) a.Enabled = enabled;
    }

    public override void MergeAndUnload() =>
        throw new NotSupportedException("Bottleneck adapters are nonlinear; they cannot be merged into the weights. Keep the adapter, or Unload() it.");

    public override void Unload()
    {
        foreach (var a in _adapters) a.Remove();
        _adapters.Clear();
    }
}
