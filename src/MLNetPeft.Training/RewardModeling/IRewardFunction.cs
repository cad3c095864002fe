namespace MLNetPeft.Training.RewardModeling;

/// <summary>
/// A reward of responses to prompts: a trained reward model, a rule (e.g. a verifiable answer check), or a sum of
/// several. What RLHF optimises; each response is scored in the context of its prompt.
/// </summary>
public interface IRewardFunction
{
    /// <summary>One score per (prompt, response); both lists have the same length.</summary>
    float[] Score(IReadOnlyList<string> prompts, IReadOnlyList<string> responses);
}

/// <summary>Rewards made from code.</summary>
public static class RewardFunction
{
    /// <summary>A reward computed per (prompt, response) by <paramref name="score"/>, e.g. a check of a verifiable answer.</summary>
    public static IRewardFunction FromDelegate(Func<string, string, float> score) => new DelegateReward(score ?? throw new ArgumentNullException(nameof(score)));

    private sealed class DelegateReward(Func<string, string, float> score) : IRewardFunction
    {
        public float[] Score(IReadOnlyList<string> prompts, IReadOnlyList<string> responses)
        {
            if (prompts.Count != responses.Count) throw new ArgumentException($"{prompts.Count} prompts and {responses.Count} responses; give one response per prompt.", nameof(responses));
            return prompts.Select((p, i) => score(p, responses[i])).ToArray();
        }
    }
}
