using MLNetPeft.Checkpoints;
using MLNetPeft.Architectures.Layers;
using MLNetPeft.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Architectures;

/// <summary>What loading a checkpoint found beyond the model's own parameters (e.g. another head's weights).</summary>
public sealed record WeightLoadReport(int LoadedCount, IReadOnlyList<string> UnusedCheckpointKeys);

/// <summary>
/// A TorchSharp module whose parameter names are HF transformers' names, so that HF checkpoint folders
/// (config.json + safetensors) load into it and are saved from it unchanged.
/// </summary>
public abstract class PretrainedModule : nn.Module
{
    /// <summary>
    /// Does nothing: children are registered explicitly under HF's names. TorchSharp would otherwise also register
    /// every module and parameter field under its C# name (it does so when a module is added to a parent), which
    /// duplicates weights in the state dict. Every module class of the architectures overrides it the same way.
    /// </summary>
    protected override void RegisterComponents() { }

    /// <summary>Files of a checkpoint folder that are not weights or config and travel with the model when it is saved.</summary>
    public static readonly IReadOnlyList<string> CompanionFiles =
    [
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
        "vocab.txt", "tokenizer.model", "added_tokens.json", "generation_config.json",
    ];

    // Child modules are invoked with call(), not forward(), so that forward hooks (how adapters such as LoRA attach
    // to a layer without replacing it) take effect.
    protected PretrainedModule(string name) : base(name) => TorchRuntime.EnsureAvailable();

    public abstract ModelConfig Config { get; }

    /// <summary>The folder this model was loaded from; its tokenizer files are carried along on save.</summary>
    public string? SourceFolder { get; internal set; }

    /// <summary>What the last load from a checkpoint found (e.g. weights of a head this class does not have).</summary>
    public WeightLoadReport? LoadReport { get; internal set; }

    /// <summary>
    /// The checkpoint names that may hold parameter <paramref name="name"/>, most likely first. Families
    /// override this for checkpoints saved from other HF classes (e.g. <c>GPT2Model</c> without the
    /// <c>transformer.</c> prefix, <c>BertForX</c> with a <c>bert.</c> prefix).
    /// </summary>
    protected virtual IEnumerable<string> CheckpointNames(string name) { yield return name; }

    /// <summary>HF's initialisation: normal(0, initializer_range) weights, zero biases, unit norms; the same seed gives the same weights.</summary>
    /// <remarks>Uses <c>Tensor.normal_</c>: TorchSharp 0.107's <c>nn.init.normal_</c> ignores the generator it is given.</remarks>
    public virtual void InitializeWeights(long seed)
    {
        var generator = new Generator((ulong)seed);
        double std = Config.InitializerRange;
        using var _ = no_grad();
        foreach (var (name, module) in named_modules())
        {
            switch (module)
            {
                case Linear linear:
                    linear.weight!.normal_(0, std, generator);
                    linear.bias?.zero_();
                    break;
                case Embedding embedding:
                    embedding.weight!.normal_(0, std, generator);
                    break;
                case LayerNorm norm:
                    norm.weight?.fill_(Scalars.Of(1.0));
                    norm.bias?.zero_();
                    break;
                case RmsNorm rms:
                    rms.Weight.fill_(Scalars.Of(1.0));
                    break;
                default:
                    InitializeOther(name, module, std, generator);
                    break;
            }
        }
    }

    /// <summary>Initialises a module type that only this family has (GPT-2's Conv1D).</summary>
    protected virtual void InitializeOther(string name, nn.Module module, double std, Generator generator) { }

    /// <summary>
    /// Copies the weights of <paramref name="checkpoint"/> into this module (converting dtype). Every parameter
    /// and persistent buffer must be found with the right shape; checkpoint tensors that match nothing are reported.
    /// </summary>
    /// <param name="checkpoint">The weights.</param>
    /// <param name="source">Named in errors.</param>
    /// <param name="loadedElsewhere">Parameter names the caller fills itself (e.g. quantised layers); not read here.</param>
    public WeightLoadReport LoadWeights(ITensorReader checkpoint, string source, IReadOnlySet<string>? loadedElsewhere = null)
    {
        var used = new HashSet<string>(StringComparer.Ordinal);
        var missing = new List<string>();
        int loaded = 0;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        foreach (var (name, target) in state_dict())
        {
            if (loadedElsewhere?.Contains(name) == true) continue;
            var key = CheckpointNames(name).FirstOrDefault(checkpoint.Contains);
            if (key is null) { missing.Add(name); continue; }
            var shape = checkpoint.ShapeOf(key);
            if (!shape.SequenceEqual(target.shape))
                throw new InvalidDataException($"Checkpoint '{source}': tensor '{key}' has shape [{string.Join(", ", shape)}] but the config implies [{string.Join(", ", target.shape)}] for '{name}'.");
            checkpoint.ReadInto(key, target);
            used.Add(key);
            loaded++;
        }
        if (missing.Count > 0)
            throw new InvalidDataException($"Checkpoint '{source}' lacks {missing.Count} weight(s) of this {GetType().Name}: {string.Join(", ", missing.Take(10))}{(missing.Count > 10 ? ", …" : "")}.");
        var unused = checkpoint.TensorNames.Where(n => !used.Contains(n)).OrderBy(n => n, StringComparer.Ordinal).ToList();
        return new WeightLoadReport(loaded, unused);
    }

    /// <summary>
    /// Saves an HF checkpoint folder: config.json, model.safetensors (sharded above <paramref name="maxShardBytes"/>),
    /// and the tokenizer and generation files of the folder the model came from. Each file is written atomically.
    /// </summary>
    /// <param name="folder">The folder to write (created when missing).</param>
    /// <param name="maxShardBytes">Above this size the weights are sharded.</param>
    /// <param name="weights">Tensors to store under the module's names instead of its own (e.g. an optimizer's float32 master copies).</param>
    public void SavePretrained(string folder, long maxShardBytes = 5L << 30, IReadOnlyDictionary<string, Tensor>? weights = null)
    {
        Directory.CreateDirectory(folder);
        var own = state_dict();
        if (weights is not null)
        {
            foreach (var name in weights.Keys.Where(n => !own.ContainsKey(n)))
                throw new ArgumentException($"'{name}' is not a weight of this {GetType().Name}.", nameof(weights));
            own = own.ToDictionary(kv => kv.Key, kv => weights.TryGetValue(kv.Key, out var w) ? w : kv.Value);
        }
        SaveTensors(folder, own, maxShardBytes);
    }

    /// <summary>
    /// Saves <paramref name="tensors"/> as this model's checkpoint, with its config and companion files: for stored
    /// forms that differ from the module's own parameters (e.g. quantised weights under bitsandbytes' names).
    /// </summary>
    public void SaveTensors(string folder, IReadOnlyDictionary<string, Tensor> tensors, long maxShardBytes = 5L << 30)
    {
        Directory.CreateDirectory(folder);
        var weightsToSave = tensors;
        var dtype = weightsToSave.Values.Select(t => t.dtype).FirstOrDefault(t => t.IsFloatingPoint(), ScalarType.Float32);
        Config.TorchDtype = dtype switch { ScalarType.BFloat16 => "bfloat16", ScalarType.Float16 => "float16", _ => "float32" };
        CheckpointWeights.Save(folder, weightsToSave, maxShardBytes);
        AtomicFile.WriteAllText(Path.Combine(folder, "config.json"), Config.ToJson());
        if (SourceFolder is { } source && Path.GetFullPath(source) != Path.GetFullPath(folder))
        {
            foreach (var file in CompanionFiles)
            {
                var from = Path.Combine(source, file);
                if (File.Exists(from)) AtomicFile.Copy(from, Path.Combine(folder, file));
            }
        }
    }

    /// <summary>Total number of parameters (shared parameters counted once).</summary>
    public long ParameterCount() => parameters().Sum(p => p.numel());
}

internal static class ScalarTypeExtensions
{
    public static bool IsFloatingPoint(this ScalarType t) =>
        t is ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float32 or ScalarType.Float64;
}
