namespace MLNetPeft.Generation;

/// <summary>How text is generated; names and defaults follow HF transformers' <c>GenerationConfig</c>.</summary>
public sealed class GenerationOptions
{
    /// <summary>Tokens to generate at most per prompt (default 64).</summary>
    public int MaxNewTokens { get; set; } = 64;
    /// <summary>Sample from the distribution (true) or take the most likely token (false, greedy; the default).</summary>
    public bool DoSample { get; set; }
    /// <summary>Divides the logits before sampling; below 1 sharpens, above 1 flattens (default 1).</summary>
    public double Temperature { get; set; } = 1.0;
    /// <summary>Sample only among the k most likely tokens; 0 disables (default 0).</summary>
    public int TopK { get; set; }
    /// <summary>Sample only among the smallest set of tokens whose probability reaches p (nucleus); 1 disables (default 1).</summary>
    public double TopP { get; set; } = 1.0;
    /// <summary>Penalises tokens already in the prompt or output (CTRL, Keskar et al. 2019); 1 disables (default 1).</summary>
    public double RepetitionPenalty { get; set; } = 1.0;
    /// <summary>
    /// Generation of a row ends when its text contains one of these; the result is cut before it. A streaming callback
    /// may already have seen the tokens that formed the stop string, since it is recognised only once complete.
    /// </summary>
    public IReadOnlyList<string> StopStrings { get; set; } = [];
    /// <summary>Token ids that end a row (not included in the output); null means the tokenizer's eos token.</summary>
    public IReadOnlyList<int>? StopTokenIds { get; set; }
    /// <summary>Seed of the sampling generator: the same seed gives the same samples. Null draws a fresh seed.</summary>
    public long? Seed { get; set; }

    /// <summary>A copy to change without changing these (the lists are shared: they are read, never changed).</summary>
    public GenerationOptions Copy() => (GenerationOptions)MemberwiseClone();

    /// <summary>Throws naming the first option that is out of range.</summary>
    public void Validate()
    {
        if (MaxNewTokens is < 0 or > 1 << 20) throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), MaxNewTokens, "must be in [0, 1048576]");
        if (!(Temperature > 0)) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "must be positive");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "must be 0 (off) or more");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "must be in (0, 1]");
        if (!(RepetitionPenalty > 0)) throw new ArgumentOutOfRangeException(nameof(RepetitionPenalty), RepetitionPenalty, "must be positive");
        if (StopStrings is null || StopStrings.Any(string.IsNullOrEmpty)) throw new ArgumentException("Stop strings must not be empty.", nameof(StopStrings));
    }
}

/// <summary>Why a row stopped generating.</summary>
public enum FinishReason
{
    /// <summary>It produced a stop token (eos by default).</summary>
    StopToken,
    /// <summary>Its text came to contain a stop string.</summary>
    StopString,
    /// <summary>It reached <see cref="GenerationOptions.MaxNewTokens"/>.</summary>
    Length,
}

/// <summary>One prompt's generated text and tokens (without the prompt, stop token or stop string).</summary>
public sealed record GenerationResult(string Text, IReadOnlyList<int> TokenIds, FinishReason FinishReason);

/// <summary>A token as it is generated: the row of the batch, its id, and the text it added (may be empty mid-character).</summary>
public readonly record struct GeneratedToken(int Row, int TokenId, string TextDelta);
