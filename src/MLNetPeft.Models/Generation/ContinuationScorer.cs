using MLNetPeft.Architectures;
using MLNetPeft.Tokenization;
using static TorchSharp.torch;

namespace MLNetPeft.Generation;

/// <summary>Teacher-forced log-likelihoods of candidate continuations after a prompt (answer search over label words).</summary>
public static class ContinuationScorer
{
    /// <summary>
    /// log P(continuation | prompt) for each candidate, summed over the candidate's tokens (no end-of-sequence
    /// token is added); each candidate is one forward pass over prompt + candidate.
    /// </summary>
    public static double[] LogLikelihoods(CausalLanguageModel model, TextTokenizer tokenizer, string prompt, IReadOnlyList<string> candidates)
    {
        ArgumentNullException.ThrowIfNull(candidates);
        var promptIds = tokenizer.Encode(prompt).Select(i => (long)i).ToArray();
        if (promptIds.Length == 0) throw new ArgumentException("The prompt has no tokens.", nameof(prompt));
        bool wasTraining = model.training;
        model.eval();
        using var _ = no_grad();
        var device = model.parameters().First().device;
        var result = new double[candidates.Count];
        for (int c = 0; c < candidates.Count; c++)
        {
            var ids = tokenizer.Encode(candidates[c], addSpecialTokens: false).Select(i => (long)i).ToArray();
            if (ids.Length == 0) throw new ArgumentException($"The candidate '{candidates[c]}' has no tokens.", nameof(candidates));
            using var scope = NewDisposeScope();
            var all = tensor(promptIds.Concat(ids).ToArray(), device: device).unsqueeze(0);
            var logits = model.Forward(all)[0].to(ScalarType.Float32);
            // Position t predicts token t + 1: the candidate's tokens are predicted from promptIds.Length − 1 on.
            var predicting = logits.narrow(0, promptIds.Length - 1, ids.Length).log_softmax(-1);
            result[c] = predicting.gather(1, tensor(ids, device: device).unsqueeze(1)).sum().item<float>();
        }
        if (wasTraining) model.train();
        return result;
    }
}
