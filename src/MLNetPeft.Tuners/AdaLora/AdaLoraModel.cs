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
    private IReadOnlyDictionary<SvdLayer, bool[]>? _finalPattern;

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
        Scoped(model, () => ApplyCore(model, config, adapterName, seed, forTraining: true));

    private static AdaLoraModel ApplyCore(nn.Module model, AdaLoraConfig config, string adapterName, long seed, bool forTraining)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        // A loaded adapter needs no budget schedule: it is not trained unless a schedule is given.
        if (forTraining) config.Validate();
        else config.ValidateShape();
        Lora.LoraModel.CheckAdapterName(adapterName);
        var targets = TargetModules.Select(model, config.TargetModules, config.TargetModulesRegex, Lora.LoraModel.DefaultTargets(model));
        var generator = new Generator((ulong)seed);
        var layers = new List<SvdLayer>();
        try
        {
            foreach (var (name, layer) in targets)
            {
                // A saved adapter keeps only its layer's remaining triplets (rank_pattern, possibly none: PEFT then saves
                // [0, in] tensors); training starts at init_r.
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

    /// <summary>
    /// PEFT's rank_pattern key of a layer: its lora_E parameter's name relative to the base model, without the adapter
    /// name (RankAllocator's names, as resize_state_dict_by_rank_pattern reads them).
    /// </summary>
    private static string PatternKey(string moduleName) => $"{moduleName}.lora_E";

    internal static AdaLoraModel Load(nn.Module model, string folder, JsonObject json, string path, out IReadOnlyList<string> unusedKeys, string adapterName)
    {
        var modules = PeftAdapterFiles.ModulesWith(folder, "lora_E");
        if (modules.Count == 0) throw new InvalidDataException($"'{folder}' holds no lora_E vectors.");
        var config = new AdaLoraConfig
        {
            InitR = PeftAdapterFiles.Number(json, "init_r", path, 12),
            TargetR = PeftAdapterFiles.Number(json, "target_r", path, 8),
            R = PeftAdapterFiles.Number(json, "r", path, 8),
            TInit = PeftAdapterFiles.Number(json, "tinit", path, 0),
            TFinal = PeftAdapterFiles.Number(json, "tfinal", path, 0),
            DeltaT = PeftAdapterFiles.Number(json, "deltaT", path, 1),
            Beta1 = PeftAdapterFiles.Number(json, "beta1", path, 0.85),
            Beta2 = PeftAdapterFiles.Number(json, "beta2", path, 0.85),
            OrthRegWeight = PeftAdapterFiles.Number(json, "orth_reg_weight", path, 0.5),
            TotalStep = PeftAdapterFiles.Number<int?>(json, "total_step", path, null),
            LoraAlpha = PeftAdapterFiles.Number(json, "lora_alpha", path, 8.0),
            LoraDropout = PeftAdapterFiles.Number(json, "lora_dropout", path, 0.0),
            InitLoraWeights = json["init_lora_weights"] is not JsonValue init || !init.TryGetValue<bool>(out var flag) || flag,
            TargetModulesRegex = PeftAdapterFiles.ExactModules(modules),
            RankPattern = ReadRankPattern(json, path),
        };
        // Each layer's stored triplets must be the count its rank_pattern (or init_r) gives, before anything is allocated.
        using (var file = PeftAdapterFiles.OpenWeights(folder))
        {
            foreach (var module in modules)
            {
                var shape = file.ShapeOf($"{PeftAdapterFiles.KeyPrefix}{module}.lora_E");
                long expected = config.RankPattern?.TryGetValue(PatternKey(module), out var keep) == true ? keep.Count(k => k) : config.InitR;
                if (shape.Length != 2 || shape[0] != expected || shape[1] != 1)
                    throw new InvalidDataException($"'{file.Source}': the lora_E of '{module}' is [{string.Join(", ", shape)}] but adapter_config.json implies [{expected}, 1].");
            }
        }
        AdaLoraModel adalora;
        try { adalora = ApplyCore(model, config, adapterName, seed: 0, forTraining: false); }
        catch (ArgumentException e) { throw new InvalidDataException($"'{path}': {e.Message}", e); }
        // The file's triplets are the kept ones; masks stay as they were saved.
        if (config.RankPattern is { } pattern) adalora.RankPattern = adalora._layers.ToDictionary(l => l, l => pattern.TryGetValue(PatternKey(l.ModuleName), out var keep) ? keep : Enumerable.Repeat(true, (int)l.A.shape[0]).ToArray());
        var filled = PeftAdapterFiles.FillFrom(adalora, folder, out var unused);
        // Files of older versions of this library also held ranknum, which is init_r anyway.
        unusedKeys = unused.Where(k => !k.EndsWith(".ranknum", StringComparison.Ordinal)).ToList();
        return filled;
    }

    /// <summary>
    /// rank_pattern as PEFT writes it (keys relative to the base model, e.g. <c>encoder.layer.0.attention.self.query.lora_E</c>);
    /// keys with the <c>base_model.model.</c> prefix, which older versions of this library wrote, are read too.
    /// </summary>
    private static Dictionary<string, bool[]>? ReadRankPattern(JsonObject json, string path)
    {
        if (json["rank_pattern"] is null) return null;
        if (json["rank_pattern"] is not JsonObject map) throw new InvalidDataException($"'{path}': rank_pattern must be an object of masks.");
        var pattern = new Dictionary<string, bool[]>(StringComparer.Ordinal);
        foreach (var (key, value) in map)
        {
            if (value is not JsonArray mask || mask.Any(b => b is not JsonValue v || !v.TryGetValue<bool>(out _)))
                throw new InvalidDataException($"'{path}': rank_pattern['{key}'] is not a list of true/false.");
            var name = key.StartsWith(PeftAdapterFiles.KeyPrefix, StringComparison.Ordinal) ? key[PeftAdapterFiles.KeyPrefix.Length..] : key;
            pattern[name] = mask.Select(b => b!.GetValue<bool>()).ToArray();
        }
        return pattern;
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

    /// <summary>
    /// The allocator's importance averages (by PEFT adapter-file name of their parameter, + ".average" / ".uncertainty")
    /// and the current and final rank patterns: what a trainer checkpoint holds so that a resumed run allocates exactly
    /// as an uninterrupted one.
    /// </summary>
    public (IReadOnlyDictionary<string, Tensor> Tensors, JsonObject? Json) TrainingState()
    {
        var names = AdapterStateDict().ToDictionary(kv => kv.Value.Handle, kv => kv.Key);
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (p, average, uncertainty) in Allocator.Scores())
        {
            tensors[names[p.Handle] + ".average"] = average;
            tensors[names[p.Handle] + ".uncertainty"] = uncertainty;
        }
        return (tensors, new JsonObject { ["rank_pattern"] = PatternJson(RankPattern), ["final_pattern"] = PatternJson(_finalPattern) });
    }

    public void RestoreTrainingState(IReadOnlyDictionary<string, Tensor> tensors, JsonObject? json)
    {
        var parameters = AdapterStateDict();
        var saved = new List<(Parameter, Tensor, Tensor)>();
        foreach (var (name, p) in parameters)
        {
            if (tensors.TryGetValue(name + ".average", out var average) && tensors.TryGetValue(name + ".uncertainty", out var uncertainty))
            {
                if (!average.shape.SequenceEqual(p.shape) || !uncertainty.shape.SequenceEqual(p.shape))
                    throw new InvalidDataException($"The checkpoint's AdaLoRA importance of '{name}' has shape [{string.Join(", ", average.shape)}], the layer [{string.Join(", ", p.shape)}].");
                saved.Add(((Parameter)p, average, uncertainty));
            }
        }
        Allocator.RestoreScores(saved);
        RankPattern = ReadPattern(json?["rank_pattern"]);
        _finalPattern = ReadPattern(json?["final_pattern"]);
    }

    private JsonNode? PatternJson(IReadOnlyDictionary<SvdLayer, bool[]>? pattern) => pattern is null ? null
        : new JsonObject(pattern.Select(kv => new KeyValuePair<string, JsonNode?>(kv.Key.ModuleName, new JsonArray(kv.Value.Select(b => (JsonNode)JsonValue.Create(b)).ToArray()))));

    private Dictionary<SvdLayer, bool[]>? ReadPattern(JsonNode? node)
    {
        if (node is not JsonObject map) return null;
        var byName = _layers.ToDictionary(l => l.ModuleName, StringComparer.Ordinal);
        var pattern = new Dictionary<SvdLayer, bool[]>();
        foreach (var (name, value) in map)
        {
            if (!byName.TryGetValue(name, out var layer) || value is not JsonArray mask || mask.Count != layer.A.shape[0])
                throw new InvalidDataException($"The checkpoint's AdaLoRA rank pattern names '{name}', which this model's adapter does not have with that rank.");
            pattern[layer] = mask.Select(b => b!.GetValue<bool>()).ToArray();
        }
        return pattern;
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

    /// <summary>
    /// What PEFT writes: only the kept triplets of each layer (rows of A and E, columns of B; all of them while no mask is
    /// set), and no ranknum, which is init_r by construction (PEFT: "ranknum is deterministic … and is therefore not saved").
    /// </summary>
    internal override Dictionary<string, Tensor> SavedStateDict()
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var l in _layers)
        {
            var keep = RankPattern?.TryGetValue(l, out var k) == true && k.Length == l.A.shape[0] ? tensor(k, device: l.A.device).nonzero().view(-1) : Scalars.Range(0, l.A.shape[0], l.A.device);
            result[$"{PeftAdapterFiles.KeyPrefix}{l.ModuleName}.lora_A"] = l.A.detach().index_select(0, keep);
            result[$"{PeftAdapterFiles.KeyPrefix}{l.ModuleName}.lora_E"] = l.E.detach().index_select(0, keep);
            result[$"{PeftAdapterFiles.KeyPrefix}{l.ModuleName}.lora_B"] = l.B.detach().index_select(1, keep);
        }
        return result;
    }

    internal override void DescribeTargets(JsonObject config)
    {
        config["target_modules"] = new JsonArray(_layers.Select(l => l.ModuleName.Split('.')[^1]).Distinct().Select(n => (JsonNode)JsonValue.Create(n)!).ToArray());
        config["fan_in_fan_out"] = _layers.Any(l => l.FanInFanOut);
        config["rank_pattern"] = null;
    }

    /// <summary>The masks of the latest allocation; a file read with a rank_pattern keeps the one it had.</summary>
    internal override void DescribeTrainedState(JsonObject config)
    {
        if (RankPattern is null || RankPattern.Any(kv => kv.Value.Length != kv.Key.A.shape[0])) return;
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
