using MLNetPeft.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Reinforcement;

/// <summary>How the KL divergence of the policy from the reference is estimated per token from log π and log π_ref (Schulman's k1 and k3).</summary>
public enum KlEstimator
{
    /// <summary>k1 = log π − log π_ref: unbiased, can be negative per token (TRL's PPO default).</summary>
    K1,
    /// <summary>k3 = (r − 1) − log r with r = π_ref / π: unbiased, never negative, lower variance (GRPO's).</summary>
    K3,
}

/// <summary>
/// The per-token arithmetic of policy-gradient RL for language models, as TRL's PPO and GRPO trainers compute it, on
/// tensors [rows, response tokens] with a mask (1 = a real response token). Pure functions, float32, no state.
/// </summary>
public static class PolicyGradient
{
    /// <summary>Mean of <paramref name="values"/> over the positions <paramref name="mask"/> marks (all rows together).</summary>
    public static Tensor MaskedMean(Tensor values, Tensor mask)
    {
        using var scope = NewDisposeScope();
        var m = mask.to(values.dtype);
        return ((values * m).sum() / m.sum()).MoveToOuterDisposeScope();
    }

    /// <summary>Variance over the masked positions, with Bessel's correction as TRL's <c>masked_var</c>.</summary>
    public static Tensor MaskedVariance(Tensor values, Tensor mask)
    {
        using var scope = NewDisposeScope();
        var m = mask.to(values.dtype);
        var centred = values - MaskedMean(values, mask);
        var variance = MaskedMean(centred * centred, mask);
        var count = m.sum();
        // Bessel: n / (n − 1); a single position has no spread to correct.
        return (variance * count / (count - Scalars.Of(1.0)).clamp_min(Scalars.Of(1.0))).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// (x − mean) / sqrt(var + 1e-8) over the masked positions (TRL's <c>masked_whiten</c>); with
    /// <paramref name="shiftMean"/> false the mean is added back, so only the scale changes (how PPO whitens rewards).
    /// Positions outside the mask are returned as they were computed, not zeroed: callers mask what they use.
    /// </summary>
    public static Tensor MaskedWhiten(Tensor values, Tensor mask, bool shiftMean = true)
    {
        using var scope = NewDisposeScope();
        var mean = MaskedMean(values, mask);
        var whitened = (values - mean) * MaskedVariance(values, mask).Plus(1e-8).rsqrt();
        if (!shiftMean) whitened = whitened.Plus(mean);
        return whitened.MoveToOuterDisposeScope();
    }

    /// <summary>The per-token KL estimate [rows, tokens] of π from π_ref, from their log-probabilities of the sampled tokens.</summary>
    public static Tensor Kl(Tensor logProbs, Tensor referenceLogProbs, KlEstimator estimator)
    {
        using var scope = NewDisposeScope();
        var result = estimator switch
        {
            KlEstimator.K1 => logProbs - referenceLogProbs,
            KlEstimator.K3 => K3(logProbs, referenceLogProbs),
            _ => throw new ArgumentOutOfRangeException(nameof(estimator), estimator, "unknown KL estimator"),
        };
        return result.MoveToOuterDisposeScope();
    }

    private static Tensor K3(Tensor logProbs, Tensor referenceLogProbs)
    {
        var logRatio = referenceLogProbs - logProbs;
        return logRatio.exp() - Scalars.Of(1.0) - logRatio;
    }

    /// <summary>
    /// Generalised advantage estimation (Schulman et al. 2016) from the last token backwards: δ_t = r_t + γ·V_{t+1} − V_t,
    /// A_t = δ_t + γλ·A_{t+1}, with V after the last token taken as 0; returns = A + V. Rewards and values must be 0 at
    /// the masked (padding) positions after a row's end, which then add nothing. Returns (advantages, returns), [rows, tokens].
    /// </summary>
    public static (Tensor Advantages, Tensor Returns) Gae(Tensor rewards, Tensor values, double gamma, double lambda)
    {
        using var scope = NewDisposeScope();
        long length = rewards.shape[1];
        var columns = new Tensor[length];
        Tensor? next = null;
        Tensor? lastAdvantage = null;
        for (long t = length - 1; t >= 0; t--)
        {
            var value = values.select(1, t);
            var delta = rewards.select(1, t) - value;
            if (next is not null) delta = delta.Plus(next.Times(gamma));
            lastAdvantage = lastAdvantage is null ? delta : delta.Plus(lastAdvantage.Times(gamma * lambda));
            columns[t] = lastAdvantage;
            next = value;
        }
        var advantages = stack(columns, 1);
        return (advantages.MoveToOuterDisposeScope(), advantages.Plus(values).MoveToOuterDisposeScope());
    }

    /// <summary>
    /// PPO's clipped surrogate, per token: max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high)) with ρ = exp(log π − log π_old);
    /// and which tokens the clipped term decided (the clip fraction's numerator). Both [rows, tokens].
    /// </summary>
    public static (Tensor Losses, Tensor Clipped) ClippedPolicyLosses(Tensor logProbs, Tensor oldLogProbs, Tensor advantages, double clipLow, double clipHigh)
    {
        using var scope = NewDisposeScope();
        var ratio = (logProbs - oldLogProbs).exp();
        var unclipped = -advantages * ratio;
        var clipped = -advantages * ratio.clamp(Scalars.Of(1 - clipLow), Scalars.Of(1 + clipHigh));
        return (unclipped.maximum(clipped).MoveToOuterDisposeScope(), clipped.gt(unclipped).MoveToOuterDisposeScope());
    }

    /// <summary>
    /// PPO's clipped value loss, per token: max((V − R)², (clip(V, V_old − ε, V_old + ε) − R)²) (the caller halves and
    /// masks it); and which tokens the clipped term decided. Both [rows, tokens].
    /// </summary>
    public static (Tensor Losses, Tensor Clipped) ClippedValueLosses(Tensor values, Tensor oldValues, Tensor returns, double clipRange)
    {
        using var scope = NewDisposeScope();
        var clippedValues = values.clamp(oldValues - Scalars.Of(clipRange), oldValues.Plus(clipRange));
        var unclippedError = values - returns;
        var clippedError = clippedValues - returns;
        var unclipped = unclippedError * unclippedError;
        var clipped = clippedError * clippedError;
        return (unclipped.maximum(clipped).MoveToOuterDisposeScope(), clipped.gt(unclipped).MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Log-probabilities [rows, tokens] of <paramref name="tokens"/> under <paramref name="logits"/> [rows, tokens, vocab]
    /// divided by <paramref name="temperature"/> (the temperature the tokens were sampled at, so that π is the
    /// distribution they came from), and the entropy of each of those distributions (without gradient).
    /// </summary>
    public static (Tensor LogProbs, Tensor Entropy) TokenLogProbs(Tensor logits, Tensor tokens, double temperature)
    {
        using var scope = NewDisposeScope();
        var logSoftmax = logits.to(ScalarType.Float32).Over(temperature).log_softmax(-1);
        var picked = logSoftmax.gather(-1, tokens.unsqueeze(-1)).squeeze(-1);
        // The entropy is a figure to report, never a loss term: computed outside the graph, it costs no backward.
        Tensor entropy;
        using (no_grad()) entropy = -(logSoftmax.exp() * logSoftmax).sum(-1);
        return (picked.MoveToOuterDisposeScope(), entropy.MoveToOuterDisposeScope());
    }
}
