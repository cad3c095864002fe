using MLNetPeft.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Architectures;

/// <summary>
/// A causal language model with a sequence-classification head in place of its LM head, as HF's
/// <c>LlamaForSequenceClassification</c>, <c>MistralForSequenceClassification</c>, <c>Qwen2ForSequenceClassification</c>
/// and <c>GPT2ForSequenceClassification</c> lay it out: the backbone's modules under their own names (<c>model.…</c>,
/// <c>transformer.…</c>) and <c>score.weight</c> [num_labels, hidden] without a bias. With one label it is a reward model.
/// A row's logits are read at its last real token, the last position its attention mask marks, so left and right
/// padding give the same scores and a pad token equal to eos is never mistaken for the end of a row (HF finds the last
/// token that is not the pad id; the two agree whenever a row does not end in the pad token).
/// </summary>
public sealed class CausalLmForSequenceClassification : SequenceClassificationModel, IPromptableModel
{
    private readonly CausalLanguageModel _backbone;
    private readonly Linear _score;
    private readonly ModelConfig _config;

    /// <param name="backbone">The language model; its modules (all but <c>lm_head</c>) become this model's, shared, not copied.</param>
    /// <param name="numLabels">Outputs of the head: 1 for a reward model.</param>
    /// <param name="padTokenId">Written to the config as <c>pad_token_id</c> (HF needs one to score batches); null keeps the backbone's.</param>
    /// <param name="seed">Seeds the head's initialisation, normal(0, initializer_range) as HF's.</param>
    public CausalLmForSequenceClassification(CausalLanguageModel backbone, int numLabels = 1, int? padTokenId = null, long seed = 0)
        : base(nameof(CausalLmForSequenceClassification))
    {
        ArgumentNullException.ThrowIfNull(backbone);
        if (numLabels is < 1 or > 100_000) throw new ArgumentOutOfRangeException(nameof(numLabels), numLabels, "must be in [1, 100000]");
        _backbone = backbone;
        NumLabels = numLabels;
        foreach (var (name, child) in backbone.named_children())
            if (name != "lm_head") register_module(name, child);
        var reference = backbone.parameters().First();
        _score = nn.Linear(backbone.HiddenSize, numLabels, hasBias: false, dtype: reference.dtype, device: reference.device);
        using (no_grad()) _score.weight!.normal_(0, backbone.Config.InitializerRange, new Generator(unchecked((ulong)seed)));
        register_module("score", _score);
        _config = ClassifierConfig(backbone.Config, ArchitectureName(backbone.Config.ModelType), numLabels, padTokenId);
        SourceFolder = backbone.SourceFolder;
    }

    /// <summary>The language model underneath (its modules are this model's).</summary>
    public CausalLanguageModel Backbone => _backbone;
    public override int NumLabels { get; }
    public override ModelConfig Config => _config;

    /// <summary>The backbone's virtual prompt (prompt learning on the backbone prompts this model too).</summary>
    public VirtualPrompt? VirtualPrompt { get => _backbone.VirtualPrompt; set => _backbone.VirtualPrompt = value; }

    public Tensor Embed(Tensor inputIds) => _backbone.Embed(inputIds);

    /// <summary>Logits [batch, num_labels] of token ids [batch, seq] with their attention mask (1 = real token, any padding side).</summary>
    public override Tensor Forward(Tensor inputIds, Tensor attentionMask)
    {
        ArgumentNullException.ThrowIfNull(attentionMask);
        if (!attentionMask.shape.SequenceEqual(inputIds.shape))
            throw new ArgumentException($"The attention mask [{string.Join(", ", attentionMask.shape)}] must have the shape of the token ids [{string.Join(", ", inputIds.shape)}].", nameof(attentionMask));
        using var scope = NewDisposeScope();
        var last = LastRealToken(attentionMask);
        var hidden = _backbone.HiddenStates(inputIds, attentionMask);
        var index = last.to(hidden.device).view(-1, 1, 1).expand(hidden.shape[0], 1, hidden.shape[2]);
        return _score.call(hidden.gather(1, index).squeeze(1)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The head's logits at every position [batch, seq, num_labels]: what a value model (PPO's critic) reads per token,
    /// as TRL applies <c>score</c> to all hidden states. Padded positions are computed too; callers mask them.
    /// </summary>
    public Tensor ForwardAllPositions(Tensor inputIds, Tensor attentionMask)
    {
        ArgumentNullException.ThrowIfNull(attentionMask);
        using var scope = NewDisposeScope();
        return _score.call(_backbone.HiddenStates(inputIds, attentionMask)).MoveToOuterDisposeScope();
    }

    /// <summary>The position of each row's last real token [batch] (int64), whichever side the padding is on.</summary>
    /// <exception cref="ArgumentException">A row has no real token.</exception>
    public static Tensor LastRealToken(Tensor attentionMask)
    {
        using var scope = NewDisposeScope();
        var real = attentionMask.ne(Scalars.Of(0L)).to(ScalarType.Int64);
        if (!real.any(1).all().item<bool>()) throw new ArgumentException("A row of the attention mask has no real token (all zeros).", nameof(attentionMask));
        var positions = Scalars.Range(0, attentionMask.shape[1], attentionMask.device);
        return (real * positions).argmax(1).MoveToOuterDisposeScope();
    }

    /// <summary>HF's name of the sequence-classification class of a causal family.</summary>
    public static string ArchitectureName(string modelType) => modelType switch
    {
        "gpt2" => "GPT2ForSequenceClassification",
        "llama" => "LlamaForSequenceClassification",
        "mistral" => "MistralForSequenceClassification",
        "qwen2" => "Qwen2ForSequenceClassification",
        _ => throw new NotSupportedException($"model_type '{modelType}' has no sequence-classification class here; supported: {string.Join(", ", PretrainedModels.CausalModelTypes)}."),
    };
}
