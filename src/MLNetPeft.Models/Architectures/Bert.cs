using MLNetPeft.Runtime;
using System.Text.Json.Serialization;
using MLNetPeft.Architectures.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Architectures;

/// <summary>HF <c>BertConfig</c> fields (BERT, MiniLM and other BERT-layout encoders).</summary>
public sealed class BertConfig : ModelConfig
{
    public BertConfig() { ModelType = "bert"; VocabSize = 30522; PadTokenId = 0; }

    [JsonPropertyName("hidden_size")] public int HiddenSize { get; set; } = 768;
    [JsonPropertyName("num_hidden_layers")] public int NumHiddenLayers { get; set; } = 12;
    [JsonPropertyName("num_attention_heads")] public int NumAttentionHeads { get; set; } = 12;
    [JsonPropertyName("intermediate_size")] public int IntermediateSize { get; set; } = 3072;
    [JsonPropertyName("hidden_act")] public string HiddenAct { get; set; } = "gelu";
    [JsonPropertyName("hidden_dropout_prob")] public double HiddenDropoutProb { get; set; } = 0.1;
    [JsonPropertyName("attention_probs_dropout_prob")] public double AttentionProbsDropoutProb { get; set; } = 0.1;
    [JsonPropertyName("max_position_embeddings")] public int MaxPositionEmbeddings { get; set; } = 512;
    [JsonPropertyName("type_vocab_size")] public int TypeVocabSize { get; set; } = 2;
    [JsonPropertyName("layer_norm_eps")] public double LayerNormEps { get; set; } = 1e-12;
    [JsonPropertyName("position_embedding_type")] public string PositionEmbeddingType { get; set; } = "absolute";

    /// <summary>The embeddings, and per layer the attention and feed-forward matrices.</summary>
    public override long MinimumParameters() =>
        (long)(VocabSize + MaxPositionEmbeddings + TypeVocabSize) * HiddenSize + (long)NumHiddenLayers * (4L * HiddenSize * HiddenSize + 2L * HiddenSize * IntermediateSize);

    public override void Validate()
    {
        base.Validate();
        Require(HiddenSize is > 0 and <= MaxWidth && NumAttentionHeads is > 0 and <= MaxHeads && HiddenSize % NumAttentionHeads == 0,
            "hidden_size", $"({HiddenSize}) must be a positive multiple of num_attention_heads ({NumAttentionHeads})");
        Require(NumHiddenLayers is > 0 and <= MaxLayers, "num_hidden_layers", $"must be in [1, {MaxLayers}]");
        Require(IntermediateSize is > 0 and <= MaxWidth * 8, "intermediate_size", $"must be in [1, {MaxWidth * 8}]");
        Require(MaxPositionEmbeddings is > 0 and <= MaxPositions, "max_position_embeddings", $"must be in [1, {MaxPositions}]");
        Require(TypeVocabSize is > 0 and <= 1 << 16, "type_vocab_size", "must be in [1, 65536]");
        Require(PositionEmbeddingType == "absolute", "position_embedding_type", $"'{PositionEmbeddingType}' is not supported (only 'absolute')");
        Activations.Get(HiddenAct, "hidden_act");
    }
}

/// <summary>The encoder's outputs: every token's final hidden state and, when the model has a pooler, tanh(W·h[CLS] + b).</summary>
public sealed record BertOutput(Tensor LastHiddenState, Tensor? PoolerOutput) : IDisposable
{
    public void Dispose() { LastHiddenState.Dispose(); PoolerOutput?.Dispose(); }
}

/// <summary>
/// The BERT encoder (Devlin et al. 2019) as HF's <c>BertModel</c>: word + absolute position + token type
/// embeddings, post-LayerNorm blocks with GELU, and an optional pooler over the first token.
/// </summary>
public sealed class BertModel : PretrainedModule, IPromptableModel
{
    private readonly BertConfig _config;
    private readonly Embedding _wordEmbeddings, _positionEmbeddings, _tokenTypeEmbeddings;
    private readonly LayerNorm _embeddingNorm;
    private readonly ModuleList<BertLayer> _layers;
    private readonly Linear? _pooler;

    public BertModel(BertConfig config, bool addPoolingLayer = true) : base(nameof(BertModel))
    {
        config.Validate();
        _config = config;
        _wordEmbeddings = nn.Embedding(config.VocabSize, config.HiddenSize, padding_idx: config.PadTokenId);
        _positionEmbeddings = nn.Embedding(config.MaxPositionEmbeddings, config.HiddenSize);
        _tokenTypeEmbeddings = nn.Embedding(config.TypeVocabSize, config.HiddenSize);
        _embeddingNorm = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        register_module("embeddings", new Container("BertEmbeddings",
            ("word_embeddings", _wordEmbeddings), ("position_embeddings", _positionEmbeddings),
            ("token_type_embeddings", _tokenTypeEmbeddings), ("LayerNorm", _embeddingNorm)));
        _layers = nn.ModuleList(Enumerable.Range(0, config.NumHiddenLayers).Select(_ => new BertLayer(config)).ToArray());
        register_module("encoder", new Container("BertEncoder", ("layer", _layers)));
        if (addPoolingLayer)
        {
            _pooler = nn.Linear(config.HiddenSize, config.HiddenSize);
            register_module("pooler", new Container("BertPooler", ("dense", _pooler)));
        }
        InitializeWeights(0);
    }

    public override ModelConfig Config => _config;
    public BertConfig BertConfig => _config;
    public bool HasPooler => _pooler is not null;
    public IReadOnlyList<BertLayer> Layers => _layers.ToArray();

    /// <summary>Virtual tokens of a prompt-learning method (see <see cref="Architectures.VirtualPrompt"/>).</summary>
    public VirtualPrompt? VirtualPrompt { get; set; }

    public Tensor Embed(Tensor inputIds) => _wordEmbeddings.call(inputIds);

    /// <summary>
    /// Encodes <paramref name="inputIds"/> [batch, seq]. <paramref name="attentionMask"/> marks real tokens with 1
    /// (padding keys are hidden from every query); token types default to 0, positions to 0..seq-1. With a
    /// <see cref="VirtualPrompt"/> its tokens come first and only the real tokens' states are returned.
    /// </summary>
    public BertOutput Forward(Tensor inputIds, Tensor? attentionMask = null, Tensor? tokenTypeIds = null, Tensor? positionIds = null)
    {
        CausalLanguageModel.CheckTokenIds(inputIds, _config.VocabSize);
        long batch = inputIds.shape[0], length = inputIds.shape[1];
        var prompt = VirtualPrompt is { Enabled: true } p ? p : null;
        int virtualTokens = prompt?.Length ?? 0;
        if (length + virtualTokens > _config.MaxPositionEmbeddings)
            throw new ArgumentException($"The input has {length} tokens" + (virtualTokens > 0 ? $" after {virtualTokens} virtual tokens" : "") +
                $"; this BERT has {_config.MaxPositionEmbeddings} positions (max_position_embeddings).");
        using var scope = NewDisposeScope();
        var device = inputIds.device;
        tokenTypeIds ??= zeros_like(inputIds, dtype: ScalarType.Int64);
        var words = Embed(inputIds);
        var dtype = words.dtype;
        var prefix = prompt?.PastKeyValues(batch, dtype, device);
        var prepended = prompt?.InputEmbeddings(batch, dtype, device);
        // HF BERT counts a key/value prefix as past positions; prepended embeddings are ordinary first positions.
        positionIds = positionIds is null
            ? Scalars.Range(virtualTokens, virtualTokens + length, device).unsqueeze(0)
            : positionIds.Plus((long)virtualTokens);
        if (prepended is not null)
        {
            words = cat([prepended, words], 1);
            tokenTypeIds = cat([zeros(batch, virtualTokens, ScalarType.Int64, device), tokenTypeIds], 1);
            positionIds = cat([Scalars.Range(0, virtualTokens, device).expand(positionIds.shape[0], -1), positionIds], 1);
        }
        if (prompt is not null)
            attentionMask = cat([ones(batch, virtualTokens, ScalarType.Int64, device), attentionMask ?? ones(batch, length, ScalarType.Int64, device)], 1);
        var x = words.Plus(_tokenTypeEmbeddings.call(tokenTypeIds)).Plus(_positionEmbeddings.call(positionIds));
        x = StepDropout.Apply(_embeddingNorm.call(x), _config.HiddenDropoutProb, training);
        using var mask = AttentionMask.Padding(attentionMask, x.dtype, device);
        for (int i = 0; i < _layers.Count; i++) x = _layers[i].Forward(x, mask, prefix?[i]);
        if (prepended is not null) x = x.narrow(1, virtualTokens, length);
        Tensor? pooled = _pooler is null ? null : _pooler.call(x.select(1, 0)).tanh().MoveToOuterDisposeScope();
        return new BertOutput(x.MoveToOuterDisposeScope(), pooled);
    }

    protected override IEnumerable<string> CheckpointNames(string name)
    {
        // BertFor… checkpoints nest the encoder under "bert."; old TF conversions call LayerNorm's weight/bias gamma/beta.
        foreach (var prefix in new[] { "", "bert." })
        {
            yield return prefix + name;
            if (name.EndsWith("LayerNorm.weight", StringComparison.Ordinal)) yield return prefix + name[..^"weight".Length] + "gamma";
            if (name.EndsWith("LayerNorm.bias", StringComparison.Ordinal)) yield return prefix + name[..^"bias".Length] + "beta";
        }
    }
}

/// <summary>One BERT layer: post-LayerNorm self-attention, then post-LayerNorm feed-forward.</summary>
public sealed class BertLayer : nn.Module
{
    /// <inheritdoc cref="PretrainedModule.RegisterComponents"/>
    protected override void RegisterComponents() { }

    private readonly Linear _query, _key, _value, _attentionOutput, _intermediate, _output;
    private readonly LayerNorm _attentionNorm, _outputNorm;
    private readonly Func<Tensor, Tensor> _act;
    private readonly int _heads;
    private readonly double _hiddenDropout, _attentionDropout;

    public BertLayer(BertConfig config) : base(nameof(BertLayer))
    {
        int h = config.HiddenSize;
        _heads = config.NumAttentionHeads;
        _query = nn.Linear(h, h);
        _key = nn.Linear(h, h);
        _value = nn.Linear(h, h);
        _attentionOutput = nn.Linear(h, h);
        _attentionNorm = nn.LayerNorm(h, config.LayerNormEps);
        _intermediate = nn.Linear(h, config.IntermediateSize);
        _output = nn.Linear(config.IntermediateSize, h);
        _outputNorm = nn.LayerNorm(h, config.LayerNormEps);
        _act = Activations.Get(config.HiddenAct, "hidden_act");
        _hiddenDropout = config.HiddenDropoutProb;
        _attentionDropout = config.AttentionProbsDropoutProb;
        register_module("attention", new Container("BertAttention",
            ("self", new Container("BertSelfAttention", ("query", _query), ("key", _key), ("value", _value))),
            ("output", new Container("BertSelfOutput", ("dense", _attentionOutput), ("LayerNorm", _attentionNorm)))));
        register_module("intermediate", new Container("BertIntermediate", ("dense", _intermediate)));
        register_module("output", new Container("BertOutput", ("dense", _output), ("LayerNorm", _outputNorm)));
    }

    public Linear Query => _query;
    public Linear Key => _key;
    public Linear Value => _value;

    /// <summary>
    /// One layer over hidden states [batch, seq, hidden]; <paramref name="prefix"/> keys and values
    /// [batch, heads, P, headDim] (prefix tuning) are attended to before the sequence's own.
    /// </summary>
    public Tensor Forward(Tensor x, AttentionMask mask, (Tensor Key, Tensor Value)? prefix = null)
    {
        using var scope = NewDisposeScope();
        var q = Attention.SplitHeads(_query.call(x), _heads);
        var k = Attention.SplitHeads(_key.call(x), _heads);
        var v = Attention.SplitHeads(_value.call(x), _heads);
        if (prefix is { } past)
        {
            k = cat([past.Key, k], 2);
            v = cat([past.Value, v], 2);
        }
        var attended = Attention.MergeHeads(Attention.ScaledDotProduct(q, k, v, mask, dropout: training ? _attentionDropout : 0.0));
        x = _attentionNorm.call(StepDropout.Apply(_attentionOutput.call(attended), _hiddenDropout, training).Plus(x));
        var ff = _output.call(_act(_intermediate.call(x)));
        return _outputNorm.call(StepDropout.Apply(ff, _hiddenDropout, training).Plus(x)).MoveToOuterDisposeScope();
    }
}

/// <summary>How a sequence classifier turns the encoder's last hidden state into one vector.</summary>
public enum SequencePooling
{
    /// <summary>The pooler over the first ([CLS]) token when the encoder has one, else that token's state (HF's BertForSequenceClassification).</summary>
    Cls,
    /// <summary>The mean over the real tokens (sentence-transformers' models such as all-MiniLM-L6-v2 are trained for it).</summary>
    Mean,
}

/// <summary>
/// A BERT encoder with a classification head: dropout, then a linear layer from the pooled vector to one logit per
/// class. Parameters are named as in HF's BertForSequenceClassification (<c>bert.…</c>, <c>classifier.weight</c>,
/// <c>classifier.bias</c>), and so is its config (architectures, id2label). With one label it is a reward model
/// (HF's regression head), scoring each text from its pooled output.
/// </summary>
public sealed class BertForSequenceClassification : SequenceClassificationModel, IPromptableModel
{
    private readonly BertModel _bert;
    private readonly Linear _classifier;
    private readonly ModelConfig _config;

    /// <param name="numLabels">Classes of the head; 1 for a reward (or regression) model.</param>
    public BertForSequenceClassification(BertModel bert, int numLabels, SequencePooling pooling, long seed = 0) : base(nameof(BertForSequenceClassification))
    {
        ArgumentNullException.ThrowIfNull(bert);
        if (numLabels is < 1 or > 100_000) throw new ArgumentOutOfRangeException(nameof(numLabels), numLabels, "must be in [1, 100000] (1 for a reward model)");
        _bert = bert;
        NumLabels = numLabels;
        Pooling = pooling;
        var reference = bert.parameters().First();
        _classifier = nn.Linear(bert.BertConfig.HiddenSize, numLabels, dtype: reference.dtype, device: reference.device);
        using (no_grad())
        {
            // HF initialises the head N(0, initializer_range²) with a zero bias.
            _classifier.weight!.normal_(0, bert.BertConfig.InitializerRange, new Generator((ulong)seed));
            _classifier.bias!.zero_();
        }
        register_module("bert", bert);
        register_module("classifier", _classifier);
        SourceFolder = bert.SourceFolder;
        _config = ClassifierConfig(bert.Config, nameof(BertForSequenceClassification), numLabels, padTokenId: null);
    }

    public BertModel Bert => _bert;
    public override int NumLabels { get; }
    public SequencePooling Pooling { get; }
    public override ModelConfig Config => _config;

    /// <summary>The encoder's virtual prompt (prompt learning on a classifier prompts its encoder, as in PEFT).</summary>
    public VirtualPrompt? VirtualPrompt { get => _bert.VirtualPrompt; set => _bert.VirtualPrompt = value; }

    public Tensor Embed(Tensor inputIds) => _bert.Embed(inputIds);

    /// <summary>Logits [batch, classes] for token ids [batch, seq] with their attention mask (1 = real token).</summary>
    public override Tensor Forward(Tensor inputIds, Tensor attentionMask) => Forward(inputIds, attentionMask, null);

    /// <summary>Logits [batch, classes] for token ids [batch, seq] with their attention mask and segment ids.</summary>
    public Tensor Forward(Tensor inputIds, Tensor attentionMask, Tensor? tokenTypeIds)
    {
        using var scope = NewDisposeScope();
        using var encoded = _bert.Forward(inputIds, attentionMask, tokenTypeIds);
        Tensor pooled;
        if (Pooling == SequencePooling.Mean)
        {
            var mask = attentionMask.unsqueeze(-1).to(encoded.LastHiddenState.dtype);
            pooled = (encoded.LastHiddenState * mask).sum(1) / mask.sum(1).clamp_min(Scalars.Of(1.0));
        }
        else
        {
            pooled = encoded.PoolerOutput ?? encoded.LastHiddenState.select(1, 0);
        }
        pooled = StepDropout.Apply(pooled, _bert.BertConfig.HiddenDropoutProb, training);
        return _classifier.call(pooled).MoveToOuterDisposeScope();
    }
}
