using MLNetPeft.Checkpoints;
using MLNetPeft.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Architectures;

/// <summary>Numeric type and device a model is loaded onto.</summary>
public sealed class ModelLoadOptions
{
    /// <summary>Parameter dtype: Float32 (default), BFloat16 or Float16.</summary>
    public ScalarType DType { get; init; } = ScalarType.Float32;
    /// <summary>"cpu" (default), "cuda" or "cuda:N".</summary>
    public string Device { get; init; } = "cpu";

    /// <summary>The dtype the checkpoint in <paramref name="folder"/> was saved in (config.json's torch_dtype; float32 when absent), on the CPU.</summary>
    public static ModelLoadOptions AsStored(string folder)
    {
        var path = Path.Combine(folder, "config.json");
        string? stored = null;
        if (File.Exists(path) && new FileInfo(path).Length <= PretrainedModels.MaxConfigBytes)
        {
            // A malformed config is reported by the load that follows.
            try { stored = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))?["torch_dtype"]?.GetValue<string>(); }
            catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or FormatException) { }
        }
        return new ModelLoadOptions { DType = stored switch { "bfloat16" => ScalarType.BFloat16, "float16" => ScalarType.Float16, _ => ScalarType.Float32 } };
    }

    /// <summary>The dtype and device of <paramref name="model"/>'s parameters: a copy loaded with these runs where the original runs.</summary>
    public static ModelLoadOptions Like(PretrainedModule model)
    {
        var reference = model.parameters().FirstOrDefault(p => p.dtype.IsFloatingPoint()) ?? throw new ArgumentException("The model has no floating-point parameters.", nameof(model));
        return new ModelLoadOptions { DType = reference.dtype, Device = reference.device.ToString() };
    }

    internal Device ResolveDevice()
    {
        if (Device.StartsWith("cuda", StringComparison.OrdinalIgnoreCase) && !cuda.is_available())
            throw new NotSupportedException($"Device '{Device}' was requested but CUDA is not available; reference TorchSharp-cuda-linux or TorchSharp-cuda-windows and run on a machine with an NVIDIA GPU, or use 'cpu'.");
        try { return device(Device); }
        catch (Exception e) when (e is ArgumentException or FormatException) { throw new ArgumentException($"Device '{Device}' is not a valid device name (use 'cpu', 'cuda' or 'cuda:N').", e); }
    }

    internal void Validate()
    {
        if (DType is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"DType {DType} is not supported for model weights; use Float32, BFloat16 or Float16.");
    }
}

/// <summary>Loads HF checkpoint folders (config.json + safetensors weights) into the architectures of this library.</summary>
public static class PretrainedModels
{
    /// <summary>The <c>model_type</c> values of causal language models this library can run.</summary>
    public static readonly IReadOnlyList<string> CausalModelTypes = ["gpt2", "llama", "mistral", "qwen2"];

    /// <summary>The largest config.json read (real ones are a few kB).</summary>
    public const long MaxConfigBytes = 16L << 20;

    /// <summary>Reads config.json of <paramref name="folder"/> into the config class of its family.</summary>
    public static ModelConfig LoadConfig(string folder)
    {
        var path = Path.Combine(folder, "config.json");
        if (!File.Exists(path))
            throw new FileNotFoundException($"Checkpoint folder '{Path.GetFullPath(folder)}' has no config.json.", path);
        if (new FileInfo(path).Length > MaxConfigBytes)
            throw new InvalidDataException($"Config '{path}' is {new FileInfo(path).Length:N0} bytes; a config.json has at most {MaxConfigBytes:N0}.");
        var json = File.ReadAllText(path);
        return ModelConfig.ReadModelType(path) switch
        {
            "gpt2" => ModelConfig.FromJson<Gpt2Config>(json, path),
            "llama" or "mistral" => ModelConfig.FromJson<LlamaConfig>(json, path),
            "qwen2" => ModelConfig.FromJson<Qwen2Config>(json, path),
            "bert" => ModelConfig.FromJson<BertConfig>(json, path),
            var other => throw new NotSupportedException($"Config '{path}' has model_type '{other}'; supported: {string.Join(", ", CausalModelTypes.Append("bert"))}."),
        };
    }

    /// <summary>A freshly initialised causal LM of the family the config belongs to.</summary>
    public static CausalLanguageModel CreateCausalLM(ModelConfig config) => config switch
    {
        Gpt2Config g => new Gpt2ForCausalLM(g),
        Qwen2Config q => new Qwen2ForCausalLM(q),
        LlamaConfig l => new LlamaForCausalLM(l),
        _ => throw new NotSupportedException($"model_type '{config.ModelType}' is not a causal language model; supported: {string.Join(", ", CausalModelTypes)}."),
    };

    /// <summary>Loads a causal LM (GPT-2, Llama, Mistral, SmolLM, Qwen2) from an HF checkpoint folder.</summary>
    public static CausalLanguageModel LoadCausalLM(string folder, ModelLoadOptions? options = null) =>
        Load(folder, options, CreateCausalLM);

    /// <summary>Loads a BERT encoder from an HF checkpoint folder (BertModel or any BertFor… checkpoint).</summary>
    public static BertModel LoadBert(string folder, ModelLoadOptions? options = null) =>
        Load(folder, options, (config, checkpoint) => config is BertConfig b
            ? new BertModel(b, addPoolingLayer: checkpoint.TensorNames.Any(n => n.Contains("pooler.dense.", StringComparison.Ordinal)))
            : throw new NotSupportedException($"Checkpoint '{folder}' is a '{config.ModelType}' model, not a BERT encoder."));

    /// <summary>
    /// Loads an HF sequence-classification checkpoint (<c>BertForSequenceClassification</c>, or
    /// <c>LlamaForSequenceClassification</c> and the other causal families' classes): a folder whose config names such a
    /// class in <c>architectures</c>, with <c>num_labels</c> from its <c>id2label</c> (HF's default of 2 when absent).
    /// </summary>
    /// <param name="pooling">How a BERT classifier pools its last hidden state; null: its pooler when it has one (HF's), else the mean.</param>
    public static SequenceClassificationModel LoadSequenceClassifier(string folder, ModelLoadOptions? options = null, SequencePooling? pooling = null) =>
        Load<SequenceClassificationModel>(folder, options, (config, checkpoint) =>
        {
            var architecture = config.Architectures?.FirstOrDefault() ?? "";
            if (!architecture.EndsWith("ForSequenceClassification", StringComparison.Ordinal))
                throw new InvalidDataException($"Checkpoint '{folder}' is a '{(architecture.Length == 0 ? config.ModelType : architecture)}', not a sequence classifier " +
                    "(its config.json names no …ForSequenceClassification class in architectures).");
            int labels = 2;
            if (config.Extra?.TryGetValue("id2label", out var id2label) == true)
            {
                if (id2label.ValueKind != System.Text.Json.JsonValueKind.Object) throw new InvalidDataException($"Checkpoint '{folder}': id2label in config.json is not an object.");
                labels = id2label.EnumerateObject().Count();
                if (labels is < 1 or > 100_000) throw new InvalidDataException($"Checkpoint '{folder}': id2label has {labels} entries; expected 1 to 100000.");
            }
            if (config is BertConfig bert)
            {
                bool pooler = checkpoint.TensorNames.Any(n => n.Contains("pooler.dense.", StringComparison.Ordinal));
                return new BertForSequenceClassification(new BertModel(bert, addPoolingLayer: pooler), labels, pooling ?? (pooler ? SequencePooling.Cls : SequencePooling.Mean));
            }
            return new CausalLmForSequenceClassification(CreateCausalLM(config), labels);
        });

    /// <summary>
    /// Before any tensor is allocated: the config's sizes must fit the weights on disk (a config claiming a larger model
    /// than its checkpoint holds would otherwise make us allocate it, and only then fail).
    /// </summary>
    /// <param name="packedElements">Elements the checkpoint holds in a packed form (NF4: two per stored byte) beyond its tensors' own counts.</param>
    public static void CheckSizes(ModelConfig config, ITensorReader checkpoint, string folder, long packedElements = 0)
    {
        long stored = checkpoint.TensorNames.Sum(n => checkpoint.ShapeOf(n).Aggregate(1L, (a, b) => a * b)) + packedElements;
        long implied = config.MinimumParameters();
        // A margin keeps the specific errors (a missing or misshapen tensor) for LoadWeights; what may be allocated stays
        // within twice what is on disk.
        if (implied > 2 * stored + (1L << 20))
            throw new InvalidDataException($"Checkpoint '{folder}': config.json implies at least {implied:N0} parameters, but the weights hold {stored:N0}; the config does not belong to these weights.");
    }

    /// <summary>Moves <paramref name="model"/> to the dtype and device of <paramref name="options"/>.</summary>
    public static void Place(PretrainedModule model, ModelLoadOptions options)
    {
        options.Validate();
        var target = options.ResolveDevice();
        if (model.parameters().Any(p => p.dtype.IsFloatingPoint() && p.dtype != options.DType)) model.to(options.DType);
        if (model.parameters().Any(p => p.device_type != target.type || (target.type != TorchSharp.DeviceType.CPU && p.device_index != target.index))) model.to(target);
        TensorLifetime.OwnTensors(model);
    }

    private static T Load<T>(string folder, ModelLoadOptions? options, Func<ModelConfig, T> create) where T : PretrainedModule =>
        Load(folder, options, (config, _) => create(config));

    private static T Load<T>(string folder, ModelLoadOptions? options, Func<ModelConfig, CheckpointWeights, T> create) where T : PretrainedModule
    {
        TorchRuntime.EnsureAvailable();
        options ??= new ModelLoadOptions();
        options.Validate();
        options.ResolveDevice();   // an unavailable device fails before anything is read
        var config = LoadConfig(folder);
        using var checkpoint = CheckpointWeights.Open(folder);
        CheckSizes(config, checkpoint, folder);
        var model = create(config, checkpoint);
        try
        {
            model.LoadReport = model.LoadWeights(checkpoint, Path.GetFullPath(folder));
            model.SourceFolder = Path.GetFullPath(folder);
            Place(model, options);
            model.eval();
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }
}
