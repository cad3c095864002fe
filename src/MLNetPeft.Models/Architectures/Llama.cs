using MLNetPeft.Runtime;
using System.Text.Json.Serialization;
using MLNetPeft.Architectures.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Architectures;

/// <summary>
/// HF <c>LlamaConfig</c> fields; also read for Mistral (<c>model_type</c> "mistral", which adds a sliding
/// attention window) and, through <see cref="Qwen2Config"/>, for Qwen2.
/// </summary>
public class LlamaConfig : ModelConfig
{
    public LlamaConfig() { ModelType = "llama"; VocabSize = 32000; }

    [JsonPropertyName("hidden_size")] public int HiddenSize { get; set; } = 4096;
    [JsonPropertyName("intermediate_size")] public int IntermediateSize { get; set; } = 11008;
    [JsonPropertyName("num_hidden_layers")] public int NumHiddenLayers { get; set; } = 32;
    [JsonPropertyName("num_attention_heads")] public int NumAttentionHeads { get; set; } = 32;
    /// <summary>Key/value heads for grouped-query attention; null means one per query head.</summary>
    [JsonPropertyName("num_key_value_heads")] public int? NumKeyValueHeads { get; set; }
    /// <summary>Per-head width; null means hidden_size / num_attention_heads.</summary>
    [JsonPropertyName("head_dim")] public int? HeadDimField { get; set; }
    [JsonPropertyName("hidden_act")] public string HiddenAct { get; set; } = "silu";
    [JsonPropertyName("max_position_embeddings")] public int MaxPositionEmbeddings { get; set; } = 2048;
    [JsonPropertyName("rms_norm_eps")] public double RmsNormEps { get; set; } = 1e-6;
    [JsonPropertyName("rope_theta")] public double RopeTheta { get; set; } = 10000.0;
    [JsonPropertyName("rope_scaling")] public RopeScaling? RopeScaling { get; set; }
    [JsonPropertyName("attention_bias")] public bool AttentionBias { get; set; }
    [JsonPropertyName("attention_dropout")] public double AttentionDropout { get; set; }
    [JsonPropertyName("mlp_bias")] public bool MlpBias { get; set; }
    [JsonPropertyName("sliding_window")] public int? SlidingWindow { get; set; }

    [JsonIgnore] public int KeyValueHeads => NumKeyValueHeads ?? NumAttentionHeads;
    [JsonIgnore] public int HeadDim => HeadDimField ?? HiddenSize / NumAttentionHeads;
    /// <summary>Bias on q_proj, k_proj and v_proj.</summary>
    [JsonIgnore] public virtual bool QkvBias => AttentionBias;
    /// <summary>Bias on o_proj.</summary>
    [JsonIgnore] public virtual bool OutputBias => AttentionBias;
    /// <summary>The attention window actually applied (Mistral's sliding_window); null for full attention.</summary>
    [JsonIgnore] public virtual int? EffectiveSlidingWindow => ModelType == "mistral" ? SlidingWindow : null;

    protected override bool DefaultTieWordEmbeddings => false;

    /// <summary>The embedding (and an untied head), and per layer the attention projections and the SwiGLU MLP.</summary>
    public override long MinimumParameters() =>
        (long)VocabSize * HiddenSize * (TieWordEmbeddings ? 1 : 2) +
        (long)NumHiddenLayers * ((long)HiddenSize * HeadDim * (2L * NumAttentionHeads + 2L * KeyValueHeads) + 3L * HiddenSize * IntermediateSize);

    public override void Validate()
    {
        base.Validate();
        Require(HiddenSize is > 0 and <= MaxWidth, "hidden_size", $"must be in [1, {MaxWidth}]");
        Require(IntermediateSize is > 0 and <= MaxWidth * 8, "intermediate_size", $"must be in [1, {MaxWidth * 8}]");
        Require(NumHiddenLayers is > 0 and <= MaxLayers, "num_hidden_layers", $"must be in [1, {MaxLayers}]");
        Require(HeadDimField is null or (> 0 and <= MaxWidth), "head_dim", $"must be in [1, {MaxWidth}]");
        Require(NumAttentionHeads is > 0 and <= MaxHeads && (HeadDimField is not null || HiddenSize % NumAttentionHeads == 0),
            "num_attention_heads", $"({NumAttentionHeads}) must divide hidden_size ({HiddenSize}) unless head_dim is given");
        Require(KeyValueHeads > 0 && NumAttentionHeads % KeyValueHeads == 0,
            "num_key_value_heads", $"({KeyValueHeads}) must divide num_attention_heads ({NumAttentionHeads})");
        Require(HeadDim % 2 == 0, "head_dim", $"({HeadDim}) must be even for rotary embeddings");
        Require(MaxPositionEmbeddings is > 0 and <= MaxPositions, "max_position_embeddings", $"must be in [1, {MaxPositions}]");
        Activations.Get(HiddenAct, "hidden_act");
        RotaryEmbedding.ComputeInverseFrequencies(HeadDim, RopeTheta, RopeScaling, MaxPositionEmbeddings);
    }
}

/// <summary>
/// The Llama family as HF's <c>LlamaForCausalLM</c> (also Mistral, SmolLM and, with q/k/v bias, Qwen2):
/// RMSNorm pre-norm blocks, rotary positions, grouped-query attention and a SwiGLU feed-forward.
/// </summary>
public class LlamaForCausalLM : CausalLanguageModel
{
    private readonly LlamaConfig _config;
    private readonly Embedding _embedTokens;
    private readonly ModuleList<LlamaDecoderLayer> _layers;
    private readonly RmsNorm _norm;
    private readonly RotaryEmbedding _rotary;
    private readonly Linear? _lmHead;

    public LlamaForCausalLM(LlamaConfig config) : base(nameof(LlamaForCausalLM))
    {
        config.Validate();
        _config = config;
        _embedTokens = nn.Embedding(config.VocabSize, config.HiddenSize);
        _layers = nn.ModuleList(Enumerable.Range(0, config.NumHiddenLayers).Select(i => new LlamaDecoderLayer(config, i)).ToArray());
        _norm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        _rotary = new RotaryEmbedding(config.HeadDim, config.RopeTheta, config.RopeScaling, config.MaxPositionEmbeddings);
        register_module("model", new Container("LlamaModel", ("embed_tokens", _embedTokens), ("layers", _layers), ("norm", _norm), ("rotary_emb", _rotary)));
        if (!config.TieWordEmbeddings)
        {
            _lmHead = nn.Linear(config.HiddenSize, config.VocabSize, hasBias: false);
            register_module("lm_head", _lmHead);
        }
        InitializeWeights(0);
    }

    public override ModelConfig Config => _config;
    public LlamaConfig LlamaConfig => _config;
    public override int LayerCount => _config.NumHiddenLayers;
    public override int HiddenSize => _config.HiddenSize;
    public override int? ContextLength => _config.MaxPositionEmbeddings;
    public IReadOnlyList<LlamaDecoderLayer> Layers => _layers.ToArray();

    public override Tensor Embed(Tensor inputIds) => _embedTokens.call(inputIds);

    public override Tensor ForwardHidden(Tensor inputsEmbeds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        long past = cache?.Length ?? 0;
        positionIds ??= DefaultPositions(inputsEmbeds, attentionMask, cache);
        var (cos, sin) = _rotary.Compute(positionIds, inputsEmbeds.dtype);
        var angles = RotaryEmbedding.ForHeads(cos, sin);
        using var mask = AttentionMask.Causal(inputsEmbeds.shape[1], past, attentionMask, _config.EffectiveSlidingWindow, inputsEmbeds.dtype, inputsEmbeds.device);
        var x = inputsEmbeds;
        for (int i = 0; i < _layers.Count; i++) x = _layers[i].Forward(x, angles, mask, cache);
        return _norm.call(x).MoveToOuterDisposeScope();
    }

    public override Tensor ComputeLogits(Tensor hidden) =>
        _lmHead is null ? SmallBatchLinear.Functional(hidden, _embedTokens.weight!) : SmallBatchLinear.Call(_lmHead, hidden);
}

/// <summary>One Llama decoder layer: x + attn(norm(x)), then x + mlp(norm(x)).</summary>
public sealed class LlamaDecoderLayer : nn.Module
{
    /// <inheritdoc cref="PretrainedModule.RegisterComponents"/>
    protected override void RegisterComponents() { }

    private readonly RmsNorm _inputNorm, _postAttentionNorm;
    private readonly LlamaAttention _selfAttn;
    private readonly LlamaMlp _mlp;

    public LlamaDecoderLayer(LlamaConfig config, int layerIndex) : base(nameof(LlamaDecoderLayer))
    {
        _selfAttn = new LlamaAttention(config, layerIndex);
        _mlp = new LlamaMlp(config);
        _inputNorm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        _postAttentionNorm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        register_module("self_attn", _selfAttn);
        register_module("mlp", _mlp);
        register_module("input_layernorm", _inputNorm);
        register_module("post_attention_layernorm", _postAttentionNorm);
    }

    public LlamaAttention SelfAttention => _selfAttn;
    public LlamaMlp Mlp => _mlp;

    /// <param name="angles">The rotary angles of the positions, laid out by <see cref="RotaryEmbedding.ForHeads"/>.</param>
    public Tensor Forward(Tensor x, (Tensor Cos, Tensor SignedSin) angles, AttentionMask mask, KvCache? cache)
    {
        using var scope = NewDisposeScope();
        x = x.Plus(_selfAttn.Forward(_inputNorm.call(x), angles, mask, cache));
        x = x.Plus(_mlp.call(_postAttentionNorm.call(x)));
        return x.MoveToOuterDisposeScope();
    }
}

/// <summary>Llama attention: separate q/k/v/o projections, rotary positions on q and k, grouped-query heads.</summary>
public sealed class LlamaAttention : nn.Module
{
    /// <inheritdoc cref="PretrainedModule.RegisterComponents"/>
    protected override void RegisterComponents() { }

    private readonly Linear _q, _k, _v, _o;
    private readonly int _heads, _kvHeads, _layerIndex;
    private readonly double _dropout;

    public LlamaAttention(LlamaConfig config, int layerIndex) : base(nameof(LlamaAttention))
    {
        _heads = config.NumAttentionHeads;
        _kvHeads = config.KeyValueHeads;
        _layerIndex = layerIndex;
        _dropout = config.AttentionDropout;
        int headDim = config.HeadDim;
        _q = nn.Linear(config.HiddenSize, _heads * headDim, hasBias: config.QkvBias);
        _k = nn.Linear(config.HiddenSize, _kvHeads * headDim, hasBias: config.QkvBias);
        _v = nn.Linear(config.HiddenSize, _kvHeads * headDim, hasBias: config.QkvBias);
        _o = nn.Linear(_heads * headDim, config.HiddenSize, hasBias: config.OutputBias);
        register_module("q_proj", _q);
        register_module("k_proj", _k);
        register_module("v_proj", _v);
        register_module("o_proj", _o);
    }

    public Linear QProj => _q;
    public Linear KProj => _k;
    public Linear VProj => _v;
    public Linear OProj => _o;

    /// <param name="angles">The rotary angles of the positions, laid out by <see cref="RotaryEmbedding.ForHeads"/>.</param>
    public Tensor Forward(Tensor x, (Tensor Cos, Tensor SignedSin) angles, AttentionMask mask, KvCache? cache)
    {
        using var scope = NewDisposeScope();
        var q = RotaryEmbedding.Apply(Layers.Attention.SplitHeads(SmallBatchLinear.Call(_q, x), _heads), angles);
        var k = RotaryEmbedding.Apply(Layers.Attention.SplitHeads(SmallBatchLinear.Call(_k, x), _kvHeads), angles);
        var v = Layers.Attention.SplitHeads(SmallBatchLinear.Call(_v, x), _kvHeads);
        if (cache is not null) (k, v) = cache.Append(_layerIndex, k, v);
        var attended = Layers.Attention.ScaledDotProduct(q, k, v, mask, dropout: training ? _dropout : 0.0);
        return SmallBatchLinear.Call(_o, Layers.Attention.MergeHeads(attended)).MoveToOuterDisposeScope();
    }
}

/// <summary>SwiGLU feed-forward (Shazeer 2020): down(act(gate(x)) · up(x)).</summary>
public sealed class LlamaMlp : nn.Module<Tensor, Tensor>
{
    /// <inheritdoc cref="PretrainedModule.RegisterComponents"/>
    protected override void RegisterComponents() { }

    private readonly Linear _gate, _up, _down;
    private readonly Func<Tensor, Tensor> _act;

    public LlamaMlp(LlamaConfig config) : base(nameof(LlamaMlp))
    {
        _gate = nn.Linear(config.HiddenSize, config.IntermediateSize, hasBias: config.MlpBias);
        _up = nn.Linear(config.HiddenSize, config.IntermediateSize, hasBias: config.MlpBias);
        _down = nn.Linear(config.IntermediateSize, config.HiddenSize, hasBias: config.MlpBias);
        register_module("gate_proj", _gate);
        register_module("up_proj", _up);
        register_module("down_proj", _down);
        _act = Activations.Get(config.HiddenAct, "hidden_act");
    }

    public Linear GateProj => _gate;
    public Linear UpProj => _up;
    public Linear DownProj => _down;

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return SmallBatchLinear.Call(_down, _act(SmallBatchLinear.Call(_gate, x)) * SmallBatchLinear.Call(_up, x)).MoveToOuterDisposeScope();
    }
}
