using MLNetPeft.Runtime;
using MLNetPeft.Architectures.Layers;
using static TorchSharp.torch;

namespace MLNetPeft.Architectures;

/// <summary>
/// A decoder-only language model. The forward pass is split where fine-tuning methods need to reach in:
/// token embedding, the transformer stack (with an optional KV cache), and the output projection.
/// </summary>
public abstract class CausalLanguageModel : PretrainedModule, IPromptableModel
{
    protected CausalLanguageModel(string name) : base(name) { }

    public abstract int LayerCount { get; }

    /// <summary>The width of the hidden states (what a head on top of the transformer reads).</summary>
    public abstract int HiddenSize { get; }

    /// <summary>The most positions the model can address (GPT-2's learned n_positions); null when positions are rotary and unbounded.</summary>
    public virtual int? MaxPositions => null;

    /// <summary>
    /// The context the model was built for (its config's max_position_embeddings or n_positions): what a server lets a
    /// prompt and its new tokens fill. Rotary models can run past it, but were not trained to.
    /// </summary>
    public virtual int? ContextLength => MaxPositions;

    /// <summary>Token embeddings [batch, seq, hidden] of <paramref name="inputIds"/> [batch, seq].</summary>
    public abstract Tensor Embed(Tensor inputIds);

    /// <summary>
    /// Runs the transformer over <paramref name="inputsEmbeds"/> and returns the final (normed) hidden states.
    /// <paramref name="attentionMask"/> [batch, cached + new] marks real tokens with 1 and padding with 0;
    /// <paramref name="positionIds"/> default to positions counted after the cache (over real tokens when padded);
    /// <paramref name="cache"/>, when given, supplies past keys/values and receives the new ones.
    /// </summary>
    public abstract Tensor ForwardHidden(Tensor inputsEmbeds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null);

    /// <summary>Vocabulary logits [batch, seq, vocab] from final hidden states.</summary>
    public abstract Tensor ComputeLogits(Tensor hidden);

    /// <summary>Virtual tokens of a prompt-learning method, put in front of every sequence (see <see cref="Architectures.VirtualPrompt"/>).</summary>
    public VirtualPrompt? VirtualPrompt { get; set; }

    /// <summary>
    /// Logits [batch, seq, vocab] for token ids [batch, seq] (int64). The attention mask, positions and cache are
    /// those of the caller's tokens; a <see cref="VirtualPrompt"/>'s tokens are accounted for here.
    /// </summary>
    public Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        return ComputeLogits(HiddenStates(inputIds, attentionMask, positionIds, cache)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Final hidden states [batch, seq, hidden] of the caller's tokens, as <see cref="Forward"/> computes them before the
    /// output projection (a <see cref="VirtualPrompt"/> is put in front and its positions left out of the result).
    /// </summary>
    public Tensor HiddenStates(Tensor inputIds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null)
    {
        CheckTokenIds(inputIds, Config.VocabSize);
        using var scope = NewDisposeScope();
        var embeds = Embed(inputIds);
        if (VirtualPrompt is { Enabled: true } prompt) return ForwardWithPrompt(prompt, embeds, attentionMask, positionIds, cache).MoveToOuterDisposeScope();
        return ForwardHidden(embeds, attentionMask, positionIds, cache).MoveToOuterDisposeScope();
    }

    private Tensor ForwardWithPrompt(VirtualPrompt prompt, Tensor embeds, Tensor? attentionMask, Tensor? positionIds, KvCache? cache)
    {
        long batch = embeds.shape[0], length = embeds.shape[1];
        int p = prompt.Length;
        bool first = cache is null || cache.Length == 0;
        long callerPast = first ? 0 : cache!.Length - p;
        if (callerPast < 0) throw new InvalidOperationException("The cache was filled without the virtual prompt; start a new cache after enabling it.");
        if (MaxPositions is { } max && p + callerPast + length > max)
            throw new ArgumentException($"{p} virtual tokens + {callerPast + length} tokens exceed the model's {max} positions; shorten the input or use fewer virtual tokens.");
        attentionMask ??= ones(batch, callerPast + length, ScalarType.Int64, embeds.device);
        var mask = cat([ones(batch, p, attentionMask.dtype, embeds.device), attentionMask], 1);
        using var localCache = first && cache is null ? CreateCache() : null;
        var useCache = cache ?? localCache;
        bool prepended = false;
        if (first)
        {
            if (prompt.PastKeyValues(batch, embeds.dtype, embeds.device) is { } past)
                for (int layer = 0; layer < past.Count; layer++) useCache!.Append(layer, past[layer].Key, past[layer].Value);
            if (prompt.InputEmbeddings(batch, embeds.dtype, embeds.device) is { } virtualEmbeds)
            {
                embeds = cat([virtualEmbeds, embeds], 1);
                prepended = true;
            }
        }
        if (positionIds is not null)
        {
            // The caller counted positions over its own tokens; the virtual ones come first.
            positionIds = positionIds.Plus((long)p);
            if (prepended) positionIds = cat([Scalars.Range(0, p, embeds.device).expand(batch, p), positionIds], 1);
        }
        // Prefix keys/values only need a cache during this call when the caller passed none (training).
        var hidden = ForwardHidden(embeds, mask, positionIds, useCache is { Length: > 0 } || cache is not null ? useCache : null);
        return prepended ? hidden.narrow(1, p, length).contiguous() : hidden;
    }

    public KvCache CreateCache() => new(LayerCount);

    /// <summary>Positions after the cache, counted over real tokens when a padding mask is given.</summary>
    protected static Tensor DefaultPositions(Tensor embeds, Tensor? attentionMask, KvCache? cache) =>
        Attention.PositionIds(embeds.shape[0], embeds.shape[1], cache?.Length ?? 0, attentionMask, embeds.device);

    internal static void CheckTokenIds(Tensor ids, long vocabSize)
    {
        if (ids.dtype != ScalarType.Int64 && ids.dtype != ScalarType.Int32)
            throw new ArgumentException($"Token ids must be an integer tensor, got {ids.dtype}.");
        if (ids.dim() != 2)
            throw new ArgumentException($"Token ids must be [batch, sequence], got [{string.Join(", ", ids.shape)}].");
        if (ids.numel() == 0)
            throw new ArgumentException("Token ids must not be empty.");
        using var scope = NewDisposeScope();
        long min = ids.min().to(ScalarType.Int64).item<long>(), max = ids.max().to(ScalarType.Int64).item<long>();
        if (min < 0 || max >= vocabSize)
            throw new ArgumentOutOfRangeException(nameof(ids), $"Token ids must lie in [0, {vocabSize}) (vocab_size); found {(min < 0 ? min : max)}.");
    }
}
