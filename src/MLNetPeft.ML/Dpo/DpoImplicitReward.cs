using MLNetPeft.Architectures;
using MLNetPeft.ML.Generation;
using MLNetPeft.Tokenization;
using MLNetPeft.Training.Dpo;

namespace MLNetPeft.ML.Dpo;

/// <summary>A DPO-tuned model as a reward: what PPO, GRPO and the pairwise evaluators take.</summary>
public static class DpoImplicitReward
{
    /// <summary>
    /// DPO's implicit reward β·(log π(y|x) − log π_ref(y|x)) of <paramref name="tuned"/> (what <c>TrainDpo</c> returned)
    /// against <paramref name="reference"/>, the model it was tuned from; responses encoded as the DPO estimator encodes them.
    /// </summary>
    /// <param name="beta">The DPO β the model was tuned with (the estimator's default 0.1).</param>
    public static ImplicitReward AsImplicitReward(this TextGenerationTransformer tuned, CausalLanguageModel reference, TextTokenizer tokenizer,
        double beta = 0.1, int maxLength = 512)
    {
        ArgumentNullException.ThrowIfNull(tuned);
        ArgumentNullException.ThrowIfNull(reference);
        return new ImplicitReward(tuned.Model, tokenizer, beta, referenceModel: reference, maxLength: maxLength);
    }
}
