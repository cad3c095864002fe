using MLNetPeft.Runtime;
using System.Text.Json.Serialization;
using MLNetPeft.Architectures.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Architectures;

/// <summary>HF <c>GPT2Config</c> fields.</summary>
public sealed class Gpt2Config : ModelConfig
{
    public Gpt2Config() { ModelType = "gpt2"; VocabSize = 50257; }

    [JsonPropertyName("n_positions")] public int NPositions { get; set; } = 1024;
    [JsonPropertyName("n_embd")] public int NEmbd { get; set; } = 768;
    [JsonPropertyName("n_layer")] public int NLayer { get; set; } = 12;
    [JsonPropertyName("n_head")] public int NHead { get; set; } = 12;
    /// <summary>Feed-forward width; null means 4 × n_embd.</summary>
    [JsonPropertyName("n_inner")] public int? NInner { get; set; }
    [JsonPropertyName("activation_function")] public string ActivationFunction { get; set; } = "gelu_new";
    [JsonPropertyName("resid_pdrop")] public double ResidPdrop { get; set; } = 0.1;
    [JsonPropertyName("embd_pdrop")] public double EmbdPdrop { get; set; } = 0.1;
    [JsonPropertyName("attn_pdrop")] public double AttnPdrop { get; set; } = 0.1;
    [JsonPropertyName("layer_norm_epsilon")] public double LayerNormEpsilon { get; set; } = 1e-5;
    [JsonPropertyName("scale_attn_weights")] public bool ScaleAttnWeights { get; set; } = true;
    [JsonPropertyName("scale_attn_by_inverse_layer_idx")] public bool ScaleAttnByInverseLayerIdx { get; set; }

    [JsonIgnore] public int InnerSize => NInner ?? 4 * NEmbd;

    /// <summary>Token and position embeddings, and per layer the attention and MLP matrices.</summary>
    public override long MinimumParameters() => (long)(VocabSize + NPositions) * NEmbd + (long)NLayer * (4L * NEmbd * NEmbd + 2L * NEmbd * InnerSize);

    public override void Validate()
    {
        base.Validate();
        Require(NEmbd is > 0 and <= MaxWidth && NHead is > 0 and <= MaxHeads && NEmbd % NHead == 0, "n_embd", $"({NEmbd}) must be a positive multiple of n_head ({NHead}), at most {MaxWidth}");
        Require(NLayer is > 0 and <= MaxLayers, "n_layer", $"must be in [1, {MaxLayers}]");
        Require(NPositions is > 0 and <= MaxPositions, "n_positions", $"must be in [1, {MaxPositions}]");
        Require(NInner is null or (> 0 and <= MaxWidth * 8), "n_inner", $"must be in [1, {MaxWidth * 8}]");
        Activations.Get(ActivationFunction, "activation_function");
    }
}

/// <summary>GPT-2's "Conv1D": a linear layer whose weight is stored [in, out] (the transpose of nn.Linear).</summary>
public sealed class Conv1D : nn.Module<Tensor, Tensor>
{
    /// <inheritdoc cref="PretrainedModule.RegisterComponents"/>
    protected override void RegisterComponents() { }

    // Named as registered: TorchSharp's Module.to() replaces parameters and re-points fields of the same name.
#pragma warning disable IDE1006
    private Parameter weight, bias;
#pragma warning restore IDE1006

    public Conv1D(long inFeatures, long outFeatures) : base(nameof(Conv1D))
    {
        // Like TorchSharp's own layers, the weights belong to the module, never to a dispose scope.
        weight = (Parameter)nn.Parameter(empty(inFeatures, outFeatures)).DetachFromDisposeScope();
        bias = (Parameter)nn.Parameter(zeros(outFeatures)).DetachFromDisposeScope();
        register_parameter(nameof(weight), weight);
        register_parameter(nameof(bias), bias);
    }

    public Parameter Weight => weight;
    public Parameter Bias => bias;

    public override Tensor forward(Tensor x) => torch.matmul(x, Weight).add_(Bias, Scalars.One);
}

/// <summary>GPT-2 (Radford et al. 2019) as HF's <c>GPT2LMHeadModel</c>: learned positions, pre-LayerNorm blocks, tied output head.</summary>
public sealed class Gpt2ForCausalLM : CausalLanguageModel
{
    private readonly Gpt2Config _config;
    private readonly Embedding _wte, _wpe;
    private readonly ModuleList<Gpt2Block> _blocks;
    private readonly LayerNorm _lnF;

    public Gpt2ForCausalLM(Gpt2Config config) : base(nameof(Gpt2ForCausalLM))
    {
        config.Validate();
        _config = config;
        _wte = nn.Embedding(config.VocabSize, config.NEmbd);
        _wpe = nn.Embedding(config.NPositions, config.NEmbd);
        _blocks = nn.ModuleList(Enumerable.Range(0, config.NLayer).Select(i => new Gpt2Block(config, i)).ToArray());
        _lnF = nn.LayerNorm(config.NEmbd, config.LayerNormEpsilon);
        register_module("transformer", new Container("GPT2Model", ("wte", _wte), ("wpe", _wpe), ("h", _blocks), ("ln_f", _lnF)));
        InitializeWeights(0);
    }

    public override ModelConfig Config => _config;
    public Gpt2Config Gpt2Config => _config;
    public override int LayerCount => _config.NLayer;
    public override int HiddenSize => _config.NEmbd;
    public override int? MaxPositions => _config.NPositions;
    public IReadOnlyList<Gpt2Block> Blocks => _blocks.ToArray();

    public override Tensor Embed(Tensor inputIds) => _wte.call(inputIds);

    public override Tensor ForwardHidden(Tensor inputsEmbeds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        long past = cache?.Length ?? 0, length = inputsEmbeds.shape[1];
        if (past + length > _config.NPositions)
            throw new ArgumentException($"GPT-2 has {_config.NPositions} positions (n_positions); this pass needs {past + length}.");
        positionIds ??= DefaultPositions(inputsEmbeds, attentionMask, cache);
        var x = StepDropout.Apply(inputsEmbeds.Plus(_wpe.call(positionIds)), _config.EmbdPdrop, training);
        using var mask = AttentionMask.Causal(length, past, attentionMask, null, x.dtype, x.device);
        for (int i = 0; i < _blocks.Count; i++) x = _blocks[i].Forward(x, mask, cache);
        return _lnF.call(x).MoveToOuterDisposeScope();
    }

    public override Tensor ComputeLogits(Tensor hidden) => nn.functional.linear(hidden, _wte.weight!);

    protected override IEnumerable<string> CheckpointNames(string name)
    {
        yield return name;
        // GPT2Model checkpoints (e.g. the original "gpt2") have no "transformer." prefix.
        if (name.StartsWith("transformer.", StringComparison.Ordinal)) yield return name["transformer.".Length..];
    }

    protected override void InitializeOther(string name, nn.Module module, double std, Generator generator)
    {
        if (module is not Conv1D conv) return;
        // GPT-2 scales the residual projections by 1/sqrt(2·n_layer) (the paper's modified initialisation).
        double s = name.EndsWith("c_proj", StringComparison.Ordinal) ? std / Math.Sqrt(2.0 * _config.NLayer) : std;
        conv.Weight.normal_(0, s, generator);
        conv.Bias.zero_();
    }
}

/// <summary>One GPT-2 block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).</summary>
public sealed class Gpt2Block : nn.Module
{
    /// <inheritdoc cref="PretrainedModule.RegisterComponents"/>
    protected override void RegisterComponents() { }

    private readonly LayerNorm _ln1, _ln2;
    private readonly Gpt2Attention _attn;
    private readonly Gpt2Mlp _mlp;

    public Gpt2Block(Gpt2Config config, int layerIndex) : base(nameof(Gpt2Block))
    {
        _ln1 = nn.LayerNorm(config.NEmbd, config.LayerNormEpsilon);
        _attn = new Gpt2Attention(config, layerIndex);
        _ln2 = nn.LayerNorm(config.NEmbd, config.LayerNormEpsilon);
        _mlp = new Gpt2Mlp(config);
        register_module("ln_1", _ln1);
        register_module("attn", _attn);
        register_module("ln_2", _ln2);
        register_module("mlp", _mlp);
    }

    public Gpt2Attention Attention => _attn;
    public Gpt2Mlp Mlp => _mlp;

    public Tensor Forward(Tensor x, AttentionMask mask, KvCache? cache)
    {
        using var scope = NewDisposeScope();
        x = x.Plus(_attn.Forward(_ln1.call(x), mask, cache));
        x = x.Plus(_mlp.call(_ln2.call(x)));
        return x.MoveToOuterDisposeScope();
    }
}

/// <summary>GPT-2 self-attention: one fused Conv1D for q, k, v (c_attn) and an output Conv1D (c_proj).</summary>
public sealed class Gpt2Attention : nn.Module
{
    /// <inheritdoc cref="PretrainedModule.RegisterComponents"/>
    protected override void RegisterComponents() { }

    private readonly Conv1D _cAttn, _cProj;
    private readonly int _heads, _layerIndex;
    private readonly double _scale, _attnDropout, _residDropout;

    public Gpt2Attention(Gpt2Config config, int layerIndex) : base(nameof(Gpt2Attention))
    {
        _heads = config.NHead;
        _layerIndex = layerIndex;
        _cAttn = new Conv1D(config.NEmbd, 3 * config.NEmbd);
        _cProj = new Conv1D(config.NEmbd, config.NEmbd);
        register_module("c_attn", _cAttn);
        register_module("c_proj", _cProj);
        double headDim = config.NEmbd / config.NHead;
        _scale = (config.ScaleAttnWeights ? 1.0 / Math.Sqrt(headDim) : 1.0) / (config.ScaleAttnByInverseLayerIdx ? layerIndex + 1 : 1);
        _attnDropout = config.AttnPdrop;
        _residDropout = config.ResidPdrop;
    }

    public Conv1D CAttn => _cAttn;
    public Conv1D CProj => _cProj;

    public Tensor Forward(Tensor x, AttentionMask mask, KvCache? cache)
    {
        using var scope = NewDisposeScope();
        var qkv = _cAttn.call(x).chunk(3, -1);
        var q = Layers.Attention.SplitHeads(qkv[0], _heads);
        var k = Layers.Attention.SplitHeads(qkv[1], _heads);
        var v = Layers.Attention.SplitHeads(qkv[2], _heads);
        if (cache is not null) (k, v) = cache.Append(_layerIndex, k, v);
        var attended = Layers.Attention.ScaledDotProduct(q, k, v, mask, _scale, training ? _attnDropout : 0.0);
        var output = _cProj.call(Layers.Attention.MergeHeads(attended));
        return StepDropout.Apply(output, _residDropout, training).MoveToOuterDisposeScope();
    }
}

/// <summary>GPT-2 feed-forward: c_proj(act(c_fc(x))).</summary>
public sealed class Gpt2Mlp : nn.Module<Tensor, Tensor>
{
    /// <inheritdoc cref="PretrainedModule.RegisterComponents"/>
    protected override void RegisterComponents() { }

    private readonly Conv1D _cFc, _cProj;
    private readonly Func<Tensor, Tensor> _act;
    private readonly double _dropout;

    public Gpt2Mlp(Gpt2Config config) : base(nameof(Gpt2Mlp))
    {
        _cFc = new Conv1D(config.NEmbd, config.InnerSize);
        _cProj = new Conv1D(config.InnerSize, config.NEmbd);
        register_module("c_fc", _cFc);
        register_module("c_proj", _cProj);
        _act = Activations.Get(config.ActivationFunction, "activation_function");
        _dropout = config.ResidPdrop;
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return StepDropout.Apply(_cProj.call(_act(_cFc.call(x))), _dropout, training).MoveToOuterDisposeScope();
    }
}
