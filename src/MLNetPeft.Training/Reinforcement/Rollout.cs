using MLNetPeft.Architectures;
using MLNetPeft.Generation;
using MLNetPeft.Runtime;
using MLNetPeft.Tokenization;
using MLNetPeft.Training.RewardModeling;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Reinforcement;

/// <summary>How the policy samples responses during RL; TRL's PPO defaults (temperature 0.7, no top-k, no top-p).</summary>
public sealed class SamplingOptions
{
    /// <summary>The sampling temperature; the policy's and the reference's log-probabilities are computed at it too.</summary>
    public double Temperature { get; set; } = 0.7;
    /// <summary>Sample among the k most likely tokens only; 0 disables.</summary>
    public int TopK { get; set; }
    /// <summary>Nucleus sampling; 1 disables.</summary>
    public double TopP { get; set; } = 1.0;
    /// <summary>The most tokens of a response (TRL's response_length; its default is 53).</summary>
    public int MaxNewTokens { get; set; } = 53;
    /// <summary>A response ends after the first of these (its tokens up to there train; the text scored is cut before it).</summary>
    public IReadOnlyList<string> StopStrings { get; set; } = [];

    public void Validate()
    {
        if (!(Temperature > 0) || !double.IsFinite(Temperature)) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "must be a finite number > 0");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "must be 0 (off) or more");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "must be in (0, 1]");
        if (MaxNewTokens < 1) throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), MaxNewTokens, "must be at least 1");
        if (StopStrings is null || StopStrings.Any(string.IsNullOrEmpty)) throw new ArgumentException("Stop strings must not be empty.", nameof(StopStrings));
    }
}

/// <summary>
/// Responses the policy sampled for a batch of prompts, in TRL's layout: each row is its prompt left-padded to the
/// longest prompt (<see cref="ContextLength"/> columns), then its response right-padded to the longest response, so
/// the logits at columns ContextLength − 1 … end − 1 predict the response tokens of every row. A response ends after
/// its first eos (which it keeps and learns to emit) or stop string, or at the length limit. It owns its tensors.
/// </summary>
public sealed class Rollout : IDisposable
{
    private Rollout(Tensor ids, Tensor attentionMask, Tensor responses, Tensor responseMask, int contextLength,
        IReadOnlyList<string> prompts, IReadOnlyList<string> texts, IReadOnlyList<bool> endedWithEos, IReadOnlyList<int> responseLengths)
    {
        Ids = ids;
        AttentionMask = attentionMask;
        Responses = responses;
        ResponseMask = responseMask;
        ContextLength = contextLength;
        Prompts = prompts;
        Texts = texts;
        EndedWithEos = endedWithEos;
        ResponseLengths = responseLengths;
    }

    /// <summary>Prompt and response ids [rows, context + response columns] (int64).</summary>
    public Tensor Ids { get; }
    /// <summary>1 over every real prompt and response token.</summary>
    public Tensor AttentionMask { get; }
    /// <summary>The response ids [rows, response columns], padding filled with 0.</summary>
    public Tensor Responses { get; }
    /// <summary>1 over each response's real tokens [rows, response columns] (float32).</summary>
    public Tensor ResponseMask { get; }
    public int ContextLength { get; }
    public IReadOnlyList<string> Prompts { get; }
    /// <summary>Each response's text, cut before a stop string (what a reward scores).</summary>
    public IReadOnlyList<string> Texts { get; }
    /// <summary>Whether each response ended with eos (as opposed to a stop string or the length limit).</summary>
    public IReadOnlyList<bool> EndedWithEos { get; }
    /// <summary>Real tokens of each response (eos included); the last of them is where a score lands.</summary>
    public IReadOnlyList<int> ResponseLengths { get; }
    public int Count => Prompts.Count;

    /// <summary>Samples one response per prompt with the policy, seeded: the same seed and weights give the same responses.</summary>
    public static Rollout Sample(CausalLanguageModel policy, TextTokenizer tokenizer, IReadOnlyList<string> prompts, IReadOnlyList<IReadOnlyList<int>> promptIds,
        SamplingOptions sampling, long seed)
    {
        int eos = tokenizer.EosId ?? throw new ArgumentException("The tokenizer has no end-of-sequence token, which RL needs to end responses.", nameof(tokenizer));
        var generated = new TextGenerator(policy, tokenizer).GenerateFromIds(promptIds, new GenerationOptions
        {
            MaxNewTokens = sampling.MaxNewTokens, DoSample = true, Temperature = sampling.Temperature, TopK = sampling.TopK, TopP = sampling.TopP,
            StopStrings = sampling.StopStrings, StopTokenIds = [eos], Seed = seed,
        });
        var responses = generated.Select(g => g.FinishReason == FinishReason.StopToken ? [.. g.TokenIds, eos] : g.TokenIds).ToList();
        return FromTokens(policy.parameters().First().device, prompts, promptIds, responses, generated.Select(g => g.Text).ToList(),
            generated.Select(g => g.FinishReason == FinishReason.StopToken).ToList(), padId: tokenizer.PadId ?? eos);
    }

    /// <summary>A rollout of given responses (what <see cref="Sample"/> builds; public for tests and for responses sampled elsewhere).</summary>
    public static Rollout FromTokens(Device device, IReadOnlyList<string> prompts, IReadOnlyList<IReadOnlyList<int>> promptIds, IReadOnlyList<IReadOnlyList<int>> responses,
        IReadOnlyList<string> texts, IReadOnlyList<bool> endedWithEos, int padId)
    {
        int rows = prompts.Count;
        if (promptIds.Count != rows || responses.Count != rows || texts.Count != rows || endedWithEos.Count != rows)
            throw new ArgumentException("Prompts, their ids, responses, texts and eos flags must have one entry per row.", nameof(responses));
        if (promptIds.Any(p => p.Count == 0) || responses.Any(r => r.Count == 0)) throw new ArgumentException("Every prompt and every response needs at least one token.", nameof(responses));
        int context = promptIds.Max(p => p.Count), length = responses.Max(r => r.Count), width = context + length;
        var ids = new long[rows * width];
        var mask = new long[rows * width];
        var responseIds = new long[rows * length];
        var responseMask = new float[rows * length];
        Array.Fill(ids, (long)padId);
        for (int b = 0; b < rows; b++)
        {
            int offset = context - promptIds[b].Count;
            for (int t = 0; t < promptIds[b].Count; t++) { ids[b * width + offset + t] = promptIds[b][t]; mask[b * width + offset + t] = 1; }
            for (int t = 0; t < responses[b].Count; t++)
            {
                ids[b * width + context + t] = responses[b][t];
                mask[b * width + context + t] = 1;
                responseIds[b * length + t] = responses[b][t];
                responseMask[b * length + t] = 1;
            }
        }
        return new Rollout(tensor(ids, [rows, width]).to(device).DetachFromDisposeScope(), tensor(mask, [rows, width]).to(device).DetachFromDisposeScope(),
            tensor(responseIds, [rows, length]).to(device).DetachFromDisposeScope(), tensor(responseMask, [rows, length]).to(device).DetachFromDisposeScope(),
            context, prompts, texts, endedWithEos, responses.Select(r => r.Count).ToList());
    }

    /// <summary>A rollout from its saved tensors (a checkpoint's), which it then owns.</summary>
    internal static Rollout Restore(Tensor ids, Tensor attentionMask, Tensor responses, Tensor responseMask, int contextLength,
        IReadOnlyList<string> prompts, IReadOnlyList<string> texts, IReadOnlyList<bool> endedWithEos, IReadOnlyList<int> responseLengths) =>
        new(ids, attentionMask, responses, responseMask, contextLength, prompts, texts, endedWithEos, responseLengths);

    /// <summary>The rollout's rows <paramref name="rows"/> as ids, attention mask, responses and response mask (a minibatch), in the caller's scope.</summary>
    public (Tensor Ids, Tensor AttentionMask, Tensor Responses, Tensor ResponseMask) Rows(Tensor rows) =>
        (Ids.index_select(0, rows), AttentionMask.index_select(0, rows), Responses.index_select(0, rows), ResponseMask.index_select(0, rows));

    /// <summary>
    /// The log-probabilities [rows, response columns] of the response tokens under <paramref name="model"/> at
    /// <paramref name="temperature"/>, zero at padding, and their entropies; in the model's current mode and grad state.
    /// </summary>
    public static (Tensor LogProbs, Tensor Entropy) ResponseLogProbs(CausalLanguageModel model, Tensor ids, Tensor attentionMask, Tensor responses,
        Tensor responseMask, int contextLength, double temperature)
    {
        using var scope = NewDisposeScope();
        var logits = model.Forward(ids, attentionMask).narrow(1, contextLength - 1, responses.shape[1]);
        var (logProbs, entropy) = PolicyGradient.TokenLogProbs(logits, responses, temperature);
        return ((logProbs * responseMask).MoveToOuterDisposeScope(), (entropy * responseMask).MoveToOuterDisposeScope());
    }

    /// <summary>The value model's estimate [rows, response columns] before each response token, zero at padding (TRL's critic read-out).</summary>
    public static Tensor Values(CausalLmForSequenceClassification valueModel, Tensor ids, Tensor attentionMask, Tensor responseMask, int contextLength)
    {
        using var scope = NewDisposeScope();
        var values = valueModel.ForwardAllPositions(ids, attentionMask).select(-1, 0).narrow(1, contextLength - 1, responseMask.shape[1]).to(ScalarType.Float32);
        return (values * responseMask).MoveToOuterDisposeScope();
    }

    /// <summary>A one-hot [rows, response columns] at each response's last real token: where a sequence-level score lands.</summary>
    public Tensor LastTokenIndicator()
    {
        var indicator = new float[Count * (int)Responses.shape[1]];
        for (int b = 0; b < Count; b++) indicator[b * Responses.shape[1] + ResponseLengths[b] - 1] = 1;
        return tensor(indicator, [Count, Responses.shape[1]]).to(Responses.device);
    }

    /// <summary>
    /// The reward's score of each response, refusing a score that is not finite with the row and prompt named (a
    /// reward that fails on some input would otherwise poison every advantage of the batch).
    /// </summary>
    public float[] Score(IRewardFunction reward, string rewardName = "The reward")
    {
        ArgumentNullException.ThrowIfNull(reward);
        var scores = reward.Score(Prompts, Texts);
        if (scores is null || scores.Length != Count)
            throw new InvalidOperationException($"{rewardName} returned {scores?.Length.ToString() ?? "null"} scores for {Count} responses; it must return one per response.");
        for (int i = 0; i < scores.Length; i++)
        {
            if (!float.IsFinite(scores[i]))
                throw new InvalidOperationException($"{rewardName} returned {scores[i]} for row {i} of the rollout (prompt \"{Shorten(Prompts[i])}\", response \"{Shorten(Texts[i])}\"); rewards must be finite numbers.");
        }
        return scores;
    }

    private static string Shorten(string text) => text.Length <= 120 ? text : text[..117] + "...";

    public void Dispose()
    {
        Ids.Dispose();
        AttentionMask.Dispose();
        Responses.Dispose();
        ResponseMask.Dispose();
    }
}
