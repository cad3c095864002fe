namespace MLNetPeft.Training;

/// <summary>
/// One comparison: the token ids of prompt + chosen response and of prompt + rejected response, the margin by which
/// chosen should win, and how many leading ids of each side are prompt (DPO scores only the response tokens).
/// </summary>
public sealed record PreferencePair(IReadOnlyList<int> Chosen, IReadOnlyList<int> Rejected, float Margin = 0,
    int ChosenPromptLength = 0, int RejectedPromptLength = 0);

/// <summary>
/// Preference pairs ready for training, each side at most <see cref="MaxLength"/> tokens. A side that is too long keeps
/// its whole response and loses the start of its prompt (TRL keeps the end too: dialogues put the turn being judged
/// last); a response longer than the limit keeps its first tokens. <see cref="Truncated"/> counts the pairs cut.
/// </summary>
public sealed class PreferencePairs
{
    private PreferencePairs(IReadOnlyList<PreferencePair> pairs, int maxLength, int truncated)
    {
        Pairs = pairs;
        MaxLength = maxLength;
        Truncated = truncated;
    }

    public IReadOnlyList<PreferencePair> Pairs { get; }
    public int Count => Pairs.Count;
    public int MaxLength { get; }
    /// <summary>Pairs of which at least one side was cut to fit.</summary>
    public int Truncated { get; }

    /// <param name="examples">Per pair: the prompt's ids, the chosen response's, the rejected response's, and a margin (0 when none).</param>
    /// <param name="maxLength">The most tokens of a side (prompt + response).</param>
    public static PreferencePairs FromExamples(IEnumerable<(IReadOnlyList<int> Prompt, IReadOnlyList<int> Chosen, IReadOnlyList<int> Rejected, float Margin)> examples, int maxLength)
    {
        ArgumentNullException.ThrowIfNull(examples);
        if (maxLength < 2) throw new ArgumentOutOfRangeException(nameof(maxLength), maxLength, "must be at least 2");
        var pairs = new List<PreferencePair>();
        int truncated = 0, index = 0;
        foreach (var (prompt, chosen, rejected, margin) in examples)
        {
            if (chosen.Count == 0 || rejected.Count == 0)
                throw new ArgumentException($"Pair {index}: the {(chosen.Count == 0 ? "chosen" : "rejected")} response has no tokens.", nameof(examples));
            if (!float.IsFinite(margin)) throw new ArgumentException($"Pair {index}: the margin is {margin}.", nameof(examples));
            var (c, chosenPrompt, cutChosen) = FitToLength(prompt, chosen, maxLength);
            var (r, rejectedPrompt, cutRejected) = FitToLength(prompt, rejected, maxLength);
            if (cutChosen || cutRejected) truncated++;
            pairs.Add(new PreferencePair(c, r, margin, chosenPrompt, rejectedPrompt));
            index++;
        }
        if (pairs.Count == 0) throw new ArgumentException("There are no preference pairs.", nameof(examples));
        return new PreferencePairs(pairs, maxLength, truncated);
    }

    /// <summary>Prompt + response in at most <paramref name="maxLength"/> tokens (the prompt loses its start first), and the prompt tokens kept.</summary>
    public static (int[] Ids, int PromptLength, bool Cut) FitToLength(IReadOnlyList<int> prompt, IReadOnlyList<int> response, int maxLength)
    {
        if (prompt.Count + response.Count <= maxLength) return ([.. prompt, .. response], prompt.Count, false);
        int keepPrompt = Math.Max(0, maxLength - response.Count);
        return ([.. prompt.Skip(prompt.Count - keepPrompt), .. response.Take(maxLength - keepPrompt)], keepPrompt, true);
    }

    /// <summary>SHA-256 of every pair (ids, prompt lengths and margin): what a checkpoint records of its data.</summary>
    public string Fingerprint()
    {
        using var hash = new DataFingerprint();
        foreach (var pair in Pairs)
            hash.Add(pair.Chosen).Add(pair.Rejected).Add(pair.Margin).Add(pair.ChosenPromptLength).Add(pair.RejectedPromptLength);
        return hash.Finish();
    }
}
