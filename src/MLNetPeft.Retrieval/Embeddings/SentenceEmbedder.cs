using MLNetPeft.Architectures;
using MLNetPeft.Runtime;
using MLNetPeft.Tokenization;
using static TorchSharp.torch;

namespace MLNetPeft.Retrieval.Embeddings;

/// <summary>How the token vectors of a text become one vector.</summary>
public enum EmbeddingPooling
{
    /// <summary>The mean over the real tokens (sentence-transformers' default, all-MiniLM-L6-v2's).</summary>
    Mean,
    /// <summary>The [CLS] token's vector.</summary>
    Cls,
}

/// <summary>Settings of a <see cref="SentenceEmbedder"/>; the defaults are all-MiniLM-L6-v2's sentence-transformers settings.</summary>
public sealed class SentenceEmbedderOptions
{
    /// <summary>Tokens per text, [CLS] and [SEP] included (sentence-transformers' max_seq_length; 256 for all-MiniLM-L6-v2). Longer texts are cut at the end.</summary>
    public int MaxLength { get; set; } = 256;

    /// <summary>Texts per forward pass; texts of similar length are batched together.</summary>
    public int BatchSize { get; set; } = 32;

    public EmbeddingPooling Pooling { get; set; } = EmbeddingPooling.Mean;

    /// <summary>Scale each vector to unit length, so a dot product is the cosine similarity.</summary>
    public bool Normalize { get; set; } = true;

    internal void Validate(BertConfig config)
    {
        if (MaxLength < 2 || MaxLength > config.MaxPositionEmbeddings)
            throw new ArgumentOutOfRangeException(nameof(MaxLength), MaxLength, $"must be in [2, {config.MaxPositionEmbeddings}] (the encoder's max_position_embeddings)");
        if (BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(BatchSize), BatchSize, "must be at least 1");
    }
}

/// <summary>
/// Sentence embeddings from a BERT encoder as sentence-transformers computes them: tokens with [CLS] and [SEP], cut to
/// <see cref="SentenceEmbedderOptions.MaxLength"/>, the last hidden state pooled over the real tokens and L2-normalised.
/// <see cref="Embed"/> runs in eval mode without gradients; <see cref="Forward"/> keeps the graph for training the encoder.
/// The embedder uses the encoder it is given and does not dispose it.
/// </summary>
public sealed class SentenceEmbedder
{
    private readonly object _gate = new();

    public SentenceEmbedder(BertModel encoder, TextTokenizer tokenizer, SentenceEmbedderOptions? options = null)
    {
        Encoder = encoder ?? throw new ArgumentNullException(nameof(encoder));
        Tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        Options = options ?? new SentenceEmbedderOptions();
        Options.Validate(encoder.BertConfig);
        if (tokenizer.Inner is not Microsoft.ML.Tokenizers.BertTokenizer)
            throw new ArgumentException($"A BERT encoder needs its WordPiece tokenizer; this one is '{tokenizer.Kind}'.", nameof(tokenizer));
    }

    public BertModel Encoder { get; }
    public TextTokenizer Tokenizer { get; }
    public SentenceEmbedderOptions Options { get; }

    /// <summary>Length of each vector (the encoder's hidden size).</summary>
    public int Dimension => Encoder.BertConfig.HiddenSize;

    /// <summary>The ids of <paramref name="text"/>: [CLS] text [SEP], cut to the maximum length with [SEP] kept last.</summary>
    public IReadOnlyList<int> Tokenize(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = Tokenizer.Encode(text);
        if (ids.Count <= Options.MaxLength) return ids;
        return [.. ids.Take(Options.MaxLength - 1), ids[^1]];
    }

    /// <summary>One vector per text, in the order given.</summary>
    public float[][] Embed(IReadOnlyList<string> texts, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(texts);
        for (int i = 0; i < texts.Count; i++)
            if (texts[i] is null) throw new ArgumentException($"Text {i} is null.", nameof(texts));
        return EmbedTokenized(texts.Select(Tokenize).ToList(), cancellationToken);
    }

    /// <summary>One vector per text already tokenized by <see cref="Tokenize"/>, in the order given.</summary>
    public float[][] EmbedTokenized(IReadOnlyList<IReadOnlyList<int>> tokenized, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(tokenized);
        var result = new float[tokenized.Count][];
        // Rows of similar length share a batch, so little of each batch is padding.
        var order = Enumerable.Range(0, tokenized.Count).OrderBy(i => tokenized[i].Count).ToArray();
        lock (_gate)
        {
            bool wasTraining = Encoder.training;
            Encoder.eval();
            try
            {
                using var _ = no_grad();
                for (int start = 0; start < order.Length; start += Options.BatchSize)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    using var scope = NewDisposeScope();
                    var batch = order.Skip(start).Take(Options.BatchSize).ToArray();
                    var vectors = Forward(batch.Select(i => tokenized[i]).ToList()).cpu();
                    var values = vectors.data<float>().ToArray();
                    for (int b = 0; b < batch.Length; b++) result[batch[b]] = values.AsSpan(b * Dimension, Dimension).ToArray();
                }
            }
            finally
            {
                if (wasTraining) Encoder.train();
            }
        }
        return result;
    }

    /// <summary>Vectors [rows, dimension] of tokenized texts (right-padded into one batch), in the encoder's current mode, with gradients when enabled.</summary>
    public Tensor Forward(IReadOnlyList<IReadOnlyList<int>> tokenized)
    {
        ArgumentNullException.ThrowIfNull(tokenized);
        if (tokenized.Count == 0 || tokenized.Any(t => t.Count == 0)) throw new ArgumentException("Every text to embed needs at least one token.", nameof(tokenized));
        using var scope = NewDisposeScope();
        int length = tokenized.Max(t => t.Count);
        var device = Encoder.parameters().First().device;
        var ids = new long[tokenized.Count * length];
        var mask = new long[tokenized.Count * length];
        int pad = Encoder.BertConfig.PadTokenId ?? 0;
        for (int r = 0; r < tokenized.Count; r++)
            for (int t = 0; t < length; t++)
            {
                bool real = t < tokenized[r].Count;
                ids[r * length + t] = real ? tokenized[r][t] : pad;
                mask[r * length + t] = real ? 1 : 0;
            }
        var idTensor = tensor(ids, [tokenized.Count, length]).to(device);
        var maskTensor = tensor(mask, [tokenized.Count, length]).to(device);
        using var output = Encoder.Forward(idTensor, maskTensor, zeros_like(idTensor));
        return Pool(output.LastHiddenState, maskTensor, Options.Pooling, Options.Normalize).MoveToOuterDisposeScope();
    }

    /// <summary>One vector per row of hidden states [rows, tokens, d] with their attention mask [rows, tokens].</summary>
    public static Tensor Pool(Tensor hidden, Tensor attentionMask, EmbeddingPooling pooling, bool normalize)
    {
        ArgumentNullException.ThrowIfNull(hidden);
        ArgumentNullException.ThrowIfNull(attentionMask);
        using var scope = NewDisposeScope();
        Tensor pooled;
        if (pooling == EmbeddingPooling.Cls) pooled = hidden.select(1, 0);
        else
        {
            // sentence-transformers: Σ mask·h / max(Σ mask, 1e-9).
            var weights = attentionMask.to(hidden.dtype).unsqueeze(-1);
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(Scalars.Of(1e-9));
        }
        if (normalize) pooled = nn.functional.normalize(pooled, p: 2, dim: 1);
        return pooled.MoveToOuterDisposeScope();
    }
}
