using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using MLNetPeft.Architectures;
using MLNetPeft.Checkpoints;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners;

/// <summary>Settings shared by the prompt-learning methods (PEFT's PromptLearningConfig).</summary>
public abstract class PromptLearningConfig : PeftConfig
{
    /// <summary>Number of virtual tokens (PEFT has no default; 20 is common).</summary>
    [JsonPropertyName("num_virtual_tokens")] public int NumVirtualTokens { get; set; } = 20;

    public override void Validate()
    {
        if (NumVirtualTokens is <= 0 or > 1 << 16) throw new ArgumentOutOfRangeException(nameof(NumVirtualTokens), NumVirtualTokens, "num_virtual_tokens must be in [1, 65536]");
    }

    internal override JsonObject ToJson() => new() { ["num_virtual_tokens"] = NumVirtualTokens, ["num_transformer_submodules"] = 1 };
}

/// <summary>
/// The sizes a prompt-learning method needs from a model (PEFT's token_dim, num_layers, num_attention_heads; for
/// grouped-query attention the key/value heads, as PEFT does for prefix tuning).
/// </summary>
public sealed record ModelGeometry(int HiddenSize, int Layers, int AttentionHeads, int KeyValueHeads, int HeadDim)
{
    public static ModelGeometry Of(IPromptableModel model) => model.Config switch
    {
        Gpt2Config g => new(g.NEmbd, g.NLayer, g.NHead, g.NHead, g.NEmbd / g.NHead),
        LlamaConfig l => new(l.HiddenSize, l.NumHiddenLayers, l.NumAttentionHeads, l.KeyValueHeads, l.HeadDim),
        BertConfig b => new(b.HiddenSize, b.NumHiddenLayers, b.NumAttentionHeads, b.NumAttentionHeads, b.HiddenSize / b.NumAttentionHeads),
        var c => throw new NotSupportedException($"Prompt learning does not know the layout of model_type '{c.ModelType}'."),
    };
}

/// <summary>
/// A prompt-learning method applied to a causal LM, a BERT encoder or a classifier over one: its encoder is registered on the model as
/// <c>prompt_encoder.{adapter}</c> (so the trainer finds its parameters), the model's other parameters are frozen,
/// and the model's <see cref="IPromptableModel.VirtualPrompt"/> is set. PEFT saves the encoder's output as
/// <c>prompt_embeddings</c>; loading such a file gives a frozen-encoder prompt with exactly those embeddings.
/// Prompt learning cannot be merged into the weights.
/// </summary>
public abstract class PromptLearningModel : PeftModel
{
    private readonly IPromptableModel _model;
    private readonly nn.Module _encoder;

    protected PromptLearningModel(IPromptableModel model, PromptLearningConfig config, nn.Module encoder, string adapterName)
        : base(AsModule(model), config, adapterName)
    {
        if (model.VirtualPrompt is not null)
            throw new InvalidOperationException("The model already carries a prompt-learning adapter; unload it first (one at a time, as in PEFT).");
        _model = model;
        _encoder = encoder;
        Geometry = ModelGeometry.Of(model);
        TargetModules.RegisterAdapterChild(AsModule(model), "prompt_encoder", adapterName, encoder);
        foreach (var (_, p) in AsModule(model).named_parameters()) p.requires_grad = false;
        foreach (var (_, p) in encoder.named_parameters()) p.requires_grad = true;
    }

    public new PromptLearningConfig Config => (PromptLearningConfig)base.Config;
    public ModelGeometry Geometry { get; }

    /// <summary>The dtype and device of the model's weights: a method's own layers are created there.</summary>
    internal static (ScalarType DType, Device Device) Placement(IPromptableModel model)
    {
        var reference = AsModule(model).parameters().First();
        return (reference.dtype, reference.device);
    }

    internal static nn.Module AsModule(IPromptableModel model) =>
        (model ?? throw new ArgumentNullException(nameof(model))) as nn.Module ?? throw new ArgumentException($"{model.GetType().Name} is not a module.", nameof(model));

    /// <summary>The virtual tokens' values as PEFT saves them: [num_virtual_tokens, width].</summary>
    public abstract Tensor PromptEmbeddings();

    /// <summary>Installs <paramref name="prompt"/> on the model (called once the subclass is ready).</summary>
    protected void Install(VirtualPrompt prompt) => _model.VirtualPrompt = prompt;

    public override Dictionary<string, Tensor> AdapterStateDict()
    {
        bool training = _encoder.training;
        _encoder.eval();
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var embeddings = PromptEmbeddings().detach().clone().DetachFromDisposeScope();
        if (training) _encoder.train();
        return new Dictionary<string, Tensor>(StringComparer.Ordinal) { [EmbeddingsKey] = embeddings };
    }

    public override void SetAdaptersEnabled(bool enabled)
    {
        if (_model.VirtualPrompt is { } prompt) prompt.Enabled = enabled;
    }

    public override void MergeAndUnload() =>
        throw new NotSupportedException($"{Config.PeftType} adds virtual tokens; it has no weights to merge. Keep the adapter, or Unload() it.");

    public override void Unload()
    {
        _model.VirtualPrompt = null;
        TargetModules.RemoveAdapterChild(AsModule(_model), "prompt_encoder", AdapterName);
    }

    internal override void DescribeTargets(JsonObject config)
    {
        config["token_dim"] = TokenDim;
        config["num_layers"] = Geometry.Layers;
        config["num_attention_heads"] = AttentionHeadsInConfig;
    }

    /// <summary>PEFT's token_dim: the hidden size (prefix tuning with grouped-query attention: kv heads × head dim).</summary>
    protected virtual int TokenDim => Geometry.HiddenSize;
    protected virtual int AttentionHeadsInConfig => Geometry.AttentionHeads;

    /// <summary>Checks that the file's prompt_embeddings is [rows, width] (before the caller allocates anything of that size).</summary>
    internal static void CheckPromptEmbeddings(string folder, long rows, long width)
    {
        using var file = PeftAdapterFiles.OpenWeights(folder);
        CheckPromptEmbeddings(file, rows, width);
    }

    private static void CheckPromptEmbeddings(ITensorReader file, long rows, long width)
    {
        if (!file.Contains(EmbeddingsKey)) throw new InvalidDataException($"'{file.Source}' has no {EmbeddingsKey}.");
        var shape = file.ShapeOf(EmbeddingsKey);
        if (!shape.SequenceEqual([rows, width]))
            throw new InvalidDataException($"'{file.Source}': {EmbeddingsKey} has shape [{string.Join(", ", shape)}] but adapter_config.json and this model imply [{rows}, {width}].");
    }

    /// <summary>Reads <c>prompt_embeddings</c> of a PEFT prompt-learning adapter, checking its shape.</summary>
    internal static Tensor ReadPromptEmbeddings(string folder, long rows, long width)
    {
        using var file = PeftAdapterFiles.OpenWeights(folder);
        CheckPromptEmbeddings(file, rows, width);
        return file.ReadTensor(EmbeddingsKey).to(ScalarType.Float32);
    }

    /// <summary>The one tensor of a PEFT prompt-learning file: the virtual tokens' values.</summary>
    public const string EmbeddingsKey = "prompt_embeddings";
}

/// <summary>A virtual prompt whose embeddings come from a function of the encoder (recomputed every call, so gradients flow).</summary>
internal sealed class PrependedPrompt(int length, Func<Tensor> embeddings) : VirtualPrompt
{
    public override int Length => length;

    public override Tensor? InputEmbeddings(long batch, ScalarType dtype, Device device) =>
        embeddings().to(dtype, device).unsqueeze(0).expand(batch, -1, -1);
}
