using MLNetPeft.Runtime;
using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.AdaLora;

/// <summary>
/// AdaLoRA applied to a model (HF PEFT's <c>AdaLoraModel</c>). Train it with a trainer that calls it as an
/// <see cref="ITrainingStepHook"/> (the library's <c>LanguageModelTrainer</c> does): each step adds the orthogonality
/// penalty to the loss and, after the optimizer step, updates the importance scores and masks triplets to the budget.
/// Saved adapters hold only the kept triplets, with <c>rank_pattern</c> in the config, as PEFT saves them.
/// </summary>
public sealed class AdaLoraModel : PeftModel, ITrainingStepHook
{
    private readonly List<SvdLayer> _layers;
    private Dictionary<SvdLayer, bool[]>? _finalPattern;

    private AdaLoraModel(nn.Module model, AdaLoraConfig config, string adapterName, List<SvdLayer> layers) : base(model, config, adapterName)
    {
        _layers = layers;
        Allocator = new RankAllocator(config, layers);
    }

    public new AdaLoraConfig Config => (AdaLoraConfig)base.Config;
    public IReadOnlyList<SvdLayer> Layers => _layers;
    public RankAllocator Allocator { get; }
    /// <summary>Kept triplets per layer after the latest allocation (null before the first).</summary>
    public IReadOnlyDictionary<SvdLayer, bool[]>? RankPattern { get; private set; }

    public static AdaLoraModel Apply(nn.Module model, AdaLoraConfig config, string adapterName = "default", long seed = 0) =>
        Scoped(model, () => ApplyCore(model, config, adapterName, seed));

    private static AdaLoraModel ApplyCore(nn.Module model, AdaLoraConfig config, string adapterName = "default", long seed = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Lora.LoraModel.CheckAdapterName(adapterName);
        var targets = TargetModules.Select(model, config.TargetModules, config.TargetModulesRegex, Lora.LoraModel.DefaultTargets(model));
        var generator = new Generator((ulong)seed);
        var layers = new List<SvdLayer>();
        try
        {
            foreach (var (name, layer) in targets)
            {
                // A saved adapter keeps only its layer's remaining triplets (rank_pattern); training starts at init_r.
                int rank = config.RankPattern?.TryGetValue(PatternKey(name), out var keep) == true ? keep.Count(k => k) : config.InitR;
                layers.Add(new SvdLayer(name, layer, rank, config.InitR, config, adapterName, generator));
            }
        }
        catch
        {
            foreach (var l in layers) l.Remove();
            throw;
        }
        foreach (var (_, p) in model.named_parameters()) p.requires_grad = false;
        foreach (var l in layers) { l.A.requires_grad = true; l.E.requires_grad = true; l.B.requires_grad = true; }
        return new AdaLoraModel(model, config, adapterName, layers);
    }

    /// <summary>PEFT's rank_pattern key of a layer: its lora_E without the adapter name.</summary>
    private static string PatternKey(string moduleName) => $"{PeftAdapterFiles.KeyPrefix}{moduleName}.lora_E";

    internal static AdaLoraModel Load(nn.Module model, string folder, JsonObject json, string path, out IReadOnlyList<string> unusedKeys, string adapterName)
    {
        var modules = PeftAdapterFiles.ModulesWith(folder, "lora_E");
        if (modules.Count == 0) throw new InvalidDataException($"'{Path.Combine(folder, PeftAdapterFiles.WeightsFileName)}' holds no lora_E vectors.");
        var config = new AdaLoraConfig
        {
            InitR = PeftAdapterFiles.Number(json, "init_r", path, 12),
            TargetR = PeftAdapterFiles.Number(json, "target_r", path, 8),
            TotalStep = PeftAdapterFiles.Number<int?>(json, "total_step", path, null) ?? 1,
            LoraAlpha = PeftAdapterFiles.Number(json, "lora_alpha", path, 8.0),
            LoraDropout = PeftAdapterFiles.Number(json, "lora_dropout", path, 0.0),
            TargetModulesRegex = PeftAdapterFiles.ExactModules(modules),
            RankPattern = (json["rank_pattern"] as JsonObject)?.ToDictionary(kv => kv.Key, kv => kv.Value!.AsArray().Select(b => b!.GetValue<bool>()).ToArray()),
        };
        config.TInit = 0;
        config.TFinal = 0;
        if (config.TotalStep <= 0) config.TotalStep = 1;
        var adalora = Apply(model, config, adapterName);
        var filled = PeftAdapterFiles.FillFrom(adalora, folder, out var unused);
        // PEFT also saves each layer's ranknum (the initial rank the scale divides by).
        using (var file = Checkpoints.SafetensorsFile.Open(Path.Combine(folder, PeftAdapterFiles.WeightsFileName)))
        {
            using var _ = no_grad();
            foreach (var l in adalora._layers)
                if (file.Contains($"{PeftAdapterFiles.KeyPrefix}{l.ModuleName}.ranknum")) file.ReadInto($"{PeftAdapterFiles.KeyPrefix}{l.ModuleName}.ranknum", l.RankNum);
        }
        unusedKeys = unused.Where(k => !k.EndsWith(".ranknum", StringComparison.Ordinal)).ToList();
        return filled;
    }

    /// <summary>PEFT's orthogonal regulariser: orth_reg_weight × mean over P and Q of ‖QQᵀ − I‖_F and ‖PᵀP − I‖_F.</summary>
    public Tensor? AdditionalLoss()
    {
        if (Config.OrthRegWeight == 0 || _layers.Count == 0) return null;
        Tensor total = zeros(1, device: _layers[0].A.device);
        foreach (var l in _layers)
        {
            var qq = l.A.matmul(l.A.t());
            var pp = l.B.t().matmul(l.B);
            total = total.Plus((qq - eye(qq.shape[0], dtype: qq.dtype, device: qq.device)).Power(2).sum().sqrt())
                         .Plus((pp - eye(pp.shape[0], dtype: pp.dtype, device: pp.device)).Power(2).sum().sqrt());
        }
        return total.Times(Config.OrthRegWeight / (2 * _layers.Count)).squeeze();
    }

    /// <summary>PEFT's update_and_allocate, called after each optimizer step with the 1-based global step.</summary>
    public void AfterOptimizerStep(int globalStep)
    {
        int end = Config.TotalStep!.Value - Config.TFinal;
        if (globalStep < end)
        {
            Allocator.UpdateImportance();
            var (budget, mask) = Allocator.Schedule(globalStep);
            if (mask) RankPattern = Allocator.MaskToBudget(budget);
        }
        else if (globalStep == end)
        {
            Allocator.UpdateImportance();
            _finalPattern = Allocator.MaskToBudget(Allocator.Schedule(globalStep).Budget);
            RankPattern = _finalPattern;
            Allocator.ResetImportance();
        }
        else if (_finalPattern is not null)
        {
            RankAllocator.Apply(_finalPattern);
        }
    }

    public override Dictionary<string, Tensor> AdapterStateDict()
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var l in _layers)
        {
            result[$"{PeftAdapterFiles.KeyPrefix}{l.ModuleName}.lora_A"] = l.A;
            result[$"{PeftAdapterFiles.KeyPrefix}{l.ModuleName}.lora_E"] = l.E;
            result[$"{PeftAdapterFiles.KeyPrefix}{l.ModuleName}.lora_B"] = l.B;
        }
        return result;
    }

    /// <summary>What PEFT writes: only the kept triplets of each layer (rows of A and E, columns of B), and ranknum.</summary>
    internal override Dictionary<string, Tensor> SavedStateDict()
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var l in _layers)
        {
            var keep = RankPattern?.TryGetValue(l, out var k) == true ? tensor(k).nonzero().view(-1) : Scalars.Range(0, l.A.shape[0]);
            result[$"{PeftAdapterFiles.KeyPrefix}{l.ModuleName}.lora_A"] = l.A.detach().index_select(0, keep);
            result[$"{PeftAdapterFiles.KeyPrefix}{l.ModuleName}.lora_E"] = l.E.detach().index_select(0, keep);
            result[$"{PeftAdapterFiles.KeyPrefix}{l.ModuleName}.lora_B"] = l.B.detach().index_select(1, keep);
            result[$"{PeftAdapterFiles.KeyPrefix}{l.ModuleName}.ranknum"] = l.RankNum.detach();
        }
        return result;
    }

    internal override void DescribeTargets(JsonObject config)
    {
        config["target_modules"] = new JsonArray(_layers.Select(l => l.ModuleName.Split('.')[^1]).Distinct().Select(n => (JsonNode)JsonValue.Create(n)!).ToArray());
        config["fan_in_fan_out"] = _layers.Any(l => l.FanInFanOut);
        if (RankPattern is not null)
            config["rank_pattern"] = new JsonObject(RankPattern.Select(kv => new KeyValuePair<string, JsonNode?>(PatternKey(kv.Key.ModuleName),
                new JsonArray(kv.Value.Select(b => (JsonNode)JsonValue.Create(b)).ToArray()))));
    }

    public override void SetAdaptersEnabled(bool enabled)
    {
        foreach (var l in _layers) l.Enabled = enabled;
    }

    public override void MergeAndUnload()
    {
        foreach (var l in _layers) l.Merge();
        foreach (var l in _layers) l.Remove();
        _layers.Clear();
    }

    public override void Unload()
    {
        foreach (var l in _layers) l.Unmerge();
        foreach (var l in _layers) l.Remove();
        _layers.Clear();
    }

    public override void Dispose() => Allocator.ResetImportance();
}
