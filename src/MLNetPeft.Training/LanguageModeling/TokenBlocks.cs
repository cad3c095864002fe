using static TorchSharp.torch;

namespace MLNetPeft.Training.LanguageModeling;

/// <summary>
/// Fixed-length training blocks for a causal language model: <see cref="BlockSize"/> input tokens per block and,
/// for each, the target token that follows it, or <see cref="IgnoreIndex"/> where no loss is taken (padding, and the
/// prompt when only completions are learned).
/// </summary>
public sealed class TokenBlocks
{
    /// <summary>The target value that contributes no loss (PyTorch's cross-entropy ignore index).</summary>
    public const int IgnoreIndex = -100;

    private readonly int[] _inputs;
    private readonly int[] _targets;
    private readonly int[] _usedLengths;   // per block, one past its last target position (0 when it has none)

    private TokenBlocks(int[] inputs, int[] targets, int blockSize, int truncated)
    {
        _inputs = inputs;
        _targets = targets;
        BlockSize = blockSize;
        Count = inputs.Length / blockSize;
        Truncated = truncated;
        _usedLengths = new int[Count];
        for (int b = 0; b < Count; b++)
        {
            int t = blockSize;
            while (t > 0 && targets[b * blockSize + t - 1] == IgnoreIndex) t--;
            _usedLengths[b] = t;
        }
    }

    public int BlockSize { get; }
    public int Count { get; }
    /// <summary>Examples that did not fit in a block and were cut (only <see cref="FromExamples"/> cuts).</summary>
    public int Truncated { get; }
    /// <summary>Tokens that serve as targets (not ignored).</summary>
    public long TargetTokens => _targets.LongCount(t => t != IgnoreIndex);

    /// <summary>
    /// Packs documents into blocks: documents are concatenated, each followed by <paramref name="separatorId"/> (eos),
    /// and the stream is cut every <paramref name="blockSize"/> tokens, so every token is a target exactly once and no
    /// padding is spent. A partial block at the end is dropped.
    /// </summary>
    public static TokenBlocks Pack(IEnumerable<IReadOnlyList<int>> documents, int blockSize, int separatorId)
    {
        ArgumentNullException.ThrowIfNull(documents);
        return PackStream(documents.Select(d => (d.Append(separatorId).ToList(), 0)), blockSize, nameof(documents));
    }

    /// <summary>
    /// Packs supervised examples (TRL's packing): each prompt + response + <paramref name="eosId"/> is appended to one
    /// stream, which is cut every <paramref name="blockSize"/> tokens, so no padding is spent and no example is
    /// truncated (one may continue in the next block). Attention is not separated between examples in a block, as in
    /// TRL's constant-length packing. With <paramref name="completionOnly"/> only responses and eos are targets.
    /// </summary>
    public static TokenBlocks PackExamples(IEnumerable<(IReadOnlyList<int> Prompt, IReadOnlyList<int> Response)> examples, int blockSize,
        int eosId, bool completionOnly = true)
    {
        ArgumentNullException.ThrowIfNull(examples);
        var blocks = PackStream(examples.Select(e => (e.Prompt.Concat(e.Response).Append(eosId).ToList(), completionOnly ? e.Prompt.Count : 0)),
            blockSize, nameof(examples));
        if (blocks.TargetTokens == 0) throw new ArgumentException("No example has a response to learn.", nameof(examples));
        return blocks;
    }

    // Each sequence's tokens from index firstTarget on are targets (predicted from the token before them, which for
    // index 0 is the end of the previous sequence).
    private static TokenBlocks PackStream(IEnumerable<(List<int> Tokens, int FirstTarget)> sequences, int blockSize, string parameter)
    {
        if (blockSize <= 0) throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "must be positive");
        var stream = new List<int>();
        var learned = new List<bool>();
        foreach (var (tokens, firstTarget) in sequences)
        {
            for (int i = 0; i < tokens.Count; i++)
            {
                stream.Add(tokens[i]);
                learned.Add(i >= firstTarget);
            }
        }
        if (stream.Count < blockSize + 1)
            throw new ArgumentException($"The data holds {stream.Count} tokens with separators; one block of {blockSize} needs {blockSize + 1}.", parameter);
        int blocks = (stream.Count - 1) / blockSize;
        var inputs = new int[blocks * blockSize];
        var targets = new int[blocks * blockSize];
        for (int i = 0; i < inputs.Length; i++)
        {
            inputs[i] = stream[i];
            targets[i] = learned[i + 1] ? stream[i + 1] : IgnoreIndex;
        }
        return new TokenBlocks(inputs, targets, blockSize, 0);
    }

    /// <summary>
    /// One block per supervised example: prompt, response and <paramref name="eosId"/>, right-padded with
    /// <paramref name="padId"/> (causal attention keeps padding after the text from affecting it). With
    /// <paramref name="completionOnly"/> (TRL's completion-only loss) only the response and eos are targets; otherwise
    /// every real token after the first is. Examples longer than the block are cut at the end (see <see cref="Truncated"/>).
    /// </summary>
    public static TokenBlocks FromExamples(IEnumerable<(IReadOnlyList<int> Prompt, IReadOnlyList<int> Response)> examples, int blockSize,
        int padId, int eosId, bool completionOnly = true)
    {
        ArgumentNullException.ThrowIfNull(examples);
        if (blockSize <= 0) throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "must be positive");
        var inputs = new List<int>();
        var targets = new List<int>();
        int truncated = 0;
        foreach (var (prompt, response) in examples)
        {
            var sequence = prompt.Concat(response).Append(eosId).ToList();
            int firstTarget = completionOnly ? prompt.Count : 1;   // index in `sequence` of the first token learned
            if (sequence.Count > blockSize + 1) { sequence.RemoveRange(blockSize + 1, sequence.Count - blockSize - 1); truncated++; }
            for (int t = 0; t < blockSize; t++)
            {
                inputs.Add(t < sequence.Count ? sequence[t] : padId);
                bool learned = t + 1 < sequence.Count && t + 1 >= firstTarget;
                targets.Add(learned ? sequence[t + 1] : IgnoreIndex);
            }
        }
        if (inputs.Count == 0) throw new ArgumentException("There are no examples.", nameof(examples));
        var blocks = new TokenBlocks([.. inputs], [.. targets], blockSize, truncated);
        if (blocks.TargetTokens == 0)
            throw new ArgumentException($"No example has a response within the block size of {blockSize} tokens; raise the block size or shorten the prompts.", nameof(examples));
        return blocks;
    }

    /// <summary>SHA-256 of the blocks' inputs and targets (and block size): what a checkpoint records of the data it was trained on.</summary>
    public string Fingerprint()
    {
        using var sha = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        sha.AppendData(BitConverter.GetBytes(BlockSize));
        sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(_inputs.AsSpan()));
        sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(_targets.AsSpan()));
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    /// <summary>
    /// Inputs and targets [indices, width] (int64) of the given blocks; width is <see cref="BlockSize"/>, or with
    /// <paramref name="trimPadding"/> one past the last target of any of these blocks (HF's padding to the longest in
    /// the batch): the columns after it take no loss and, attention being causal, change no earlier position.
    /// </summary>
    public (Tensor Inputs, Tensor Targets) Batch(IReadOnlyList<int> indices, bool trimPadding = false)
    {
        foreach (int block in indices)
            if (block < 0 || block >= Count) throw new ArgumentOutOfRangeException(nameof(indices), block, $"there are {Count} blocks");
        int width = trimPadding ? Math.Max(1, indices.Max(UsedLength)) : BlockSize;
        var inputs = new long[indices.Count * width];
        var targets = new long[indices.Count * width];
        for (int i = 0; i < indices.Count; i++)
        {
            int block = indices[i];
            for (int t = 0; t < width; t++)
            {
                inputs[i * width + t] = _inputs[block * BlockSize + t];
                targets[i * width + t] = _targets[block * BlockSize + t];
            }
        }
        return (tensor(inputs, [indices.Count, width]), tensor(targets, [indices.Count, width]));
    }

    private int UsedLength(int block) => _usedLengths[block];
}
