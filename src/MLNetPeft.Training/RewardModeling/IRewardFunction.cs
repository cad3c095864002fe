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
