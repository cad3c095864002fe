using static TorchSharp.torch;

namespace MLNetPeft.Training.LanguageModeling;

/// <summary>
/// Fixed-length training blocks for a causal language model: each block holds <see cref="BlockSize"/> + 1 tokens,
/// the first <see cref="BlockSize"/> are inputs and the last <see cref="BlockSize"/> their next-token targets.
/// </summary>
public sealed class TokenBlocks
{
    /// <summary>The target value that contributes no loss (PyTorch's cross-entropy ignore index).</summary>
    public const long IgnoreIndex = -100;

    private readonly int[] _tokens;

    private TokenBlocks(int[] tokens, int blockSize)
    {
        _tokens = tokens;
        BlockSize = blockSize;
        Count = (tokens.Length - 1) / blockSize;
    }

    public int BlockSize { get; }
    public int Count { get; }
    /// <summary>Tokens that serve as targets (Count × BlockSize).</summary>
    public long TargetTokens => (long)Count * BlockSize;

    /// <summary>
    /// Packs documents into blocks: documents are concatenated, each followed by <paramref name="separatorId"/> (eos),
    /// and the stream is cut every <paramref name="blockSize"/> tokens, so every token is a target exactly once and no
    /// padding is spent. A partial block at the end is dropped.
    /// </summary>
    public static TokenBlocks Pack(IEnumerable<IReadOnlyList<int>> documents, int blockSize, int separatorId)
    {
        ArgumentNullException.ThrowIfNull(documents);
        if (blockSize <= 0) throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "must be positive");
        var stream = new List<int>();
        foreach (var doc in documents)
        {
            stream.AddRange(doc);
            stream.Add(separatorId);
        }
        if (stream.Count < blockSize + 1)
            throw new ArgumentException($"The documents hold {stream.Count} tokens with separators; one block of {blockSize} needs {blockSize + 1}.", nameof(documents));
        int blocks = (stream.Count - 1) / blockSize;
        return new TokenBlocks(stream.GetRange(0, blocks * blockSize + 1).ToArray(), blockSize);
    }

    /// <summary>Inputs and targets [indices, BlockSize] (int64) of the given blocks.</summary>
    public (Tensor Inputs, Tensor Targets) Batch(IReadOnlyList<int> indices)
    {
        var inputs = new long[indices.Count * BlockSize];
        var targets = new long[indices.Count * BlockSize];
        for (int i = 0; i < indices.Count; i++)
        {
            int block = indices[i];
            if (block < 0 || block >= Count) throw new ArgumentOutOfRangeException(nameof(indices), block, $"there are {Count} blocks");
            int start = block * BlockSize;
            for (int t = 0; t < BlockSize; t++)
            {
                inputs[i * BlockSize + t] = _tokens[start + t];
                targets[i * BlockSize + t] = _tokens[start + t + 1];
            }
        }
        return (tensor(inputs, [indices.Count, BlockSize]), tensor(targets, [indices.Count, BlockSize]));
    }
}
