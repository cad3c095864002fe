using MLNetPeft.Runtime;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.AdaLora;

/// <summary>
/// AdaLoRA's budget: the importance of each parameter is |w · ∂L/∂w|, smoothed by an EMA (beta1), times the EMA
/// (beta2) of its deviation from that average (the uncertainty); a singular triplet scores its Λ entry plus the means
/// of its row of Q and its column of P. The total rank follows a cubic schedule from the initial to the target budget
/// between tinit and total_step − tfinal; every deltaT steps the lowest-scoring triplets are masked (Λ set to zero).
/// </summary>
public sealed class RankAllocator
{
    private readonly AdaLoraConfig _config;
    private readonly IReadOnlyList<SvdLayer> _layers;
    private readonly Dictionary<Parameter, (Tensor Average, Tensor Uncertainty)> _scores = new(ReferenceEqualityComparer.Instance);

    internal RankAllocator(AdaLoraConfig config, IReadOnlyList<SvdLayer> layers)
    {
        _config = config;
        _layers = layers;
        InitialBudget = layers.Sum(l => (int)l.A.shape[0]);
        TargetBudget = config.TargetR * layers.Count;
    }

    public int InitialBudget { get; }
    public int TargetBudget { get; }

    /// <summary>The rank budget at <paramref name="step"/> and whether to mask then (PEFT's budget_schedule).</summary>
    public (int Budget, bool Mask) Schedule(int step)
    {
        int tinit = _config.TInit, tfinal = _config.TFinal, total = _config.TotalStep!.Value;
        if (step <= tinit) return (InitialBudget, false);
        if (step > total - tfinal) return (TargetBudget, true);
        double remaining = 1 - (double)(step - tinit) / (total - tfinal - tinit);
        return ((int)((InitialBudget - TargetBudget) * Math.Pow(remaining, 3) + TargetBudget), step % _config.DeltaT == 0);
    }

    /// <summary>Updates the smoothed importance of every adapter parameter from its current gradient.</summary>
    internal void UpdateImportance()
    {
        using var _ = no_grad();
        foreach (var p in _layers.SelectMany(l => new[] { l.A, l.E, l.B }))
        {
            if (p.grad is null) continue;
            var sensitivity = (p * p.grad).abs();
            if (!_scores.TryGetValue(p, out var s))
                s = (zeros_like(p).DetachFromDisposeScope(), zeros_like(p).DetachFromDisposeScope());
            var average = s.Average.Times(_config.Beta1).Plus(sensitivity.Times(1 - _config.Beta1)).DetachFromDisposeScope();
            var uncertainty = s.Uncertainty.Times(_config.Beta2).Plus((sensitivity - average).abs().Times(1 - _config.Beta2)).DetachFromDisposeScope();
            s.Average.Dispose();
            s.Uncertainty.Dispose();
            _scores[p] = (average, uncertainty);
        }
    }

    internal void ResetImportance()
    {
        foreach (var (a, u) in _scores.Values) { a.Dispose(); u.Dispose(); }
        _scores.Clear();
    }

    /// <summary>The importance averages by parameter, for checkpoints (the caller names them).</summary>
    internal IEnumerable<(Parameter Parameter, Tensor Average, Tensor Uncertainty)> Scores() => _scores.Select(kv => (kv.Key, kv.Value.Average, kv.Value.Uncertainty));

    /// <summary>Replaces the importance averages with copies of saved ones.</summary>
    internal void RestoreScores(IEnumerable<(Parameter Parameter, Tensor Average, Tensor Uncertainty)> saved)
    {
        ResetImportance();
        using var _ = no_grad();
        foreach (var (p, average, uncertainty) in saved)
            _scores[p] = (average.to(p.dtype, p.device).clone().DetachFromDisposeScope(), uncertainty.to(p.dtype, p.device).clone().DetachFromDisposeScope());
    }

    private Tensor Score(Parameter p) => _scores.TryGetValue(p, out var s) ? s.Average * s.Uncertainty : zeros_like(p);

    /// <summary>Masks all but the <paramref name="budget"/> most important triplets; returns the kept ones per layer.</summary>
    internal Dictionary<SvdLayer, bool[]> MaskToBudget(int budget)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var triplets = _layers.ToDictionary(l => l, l =>
            Score(l.E).view(-1).Plus(Score(l.A).mean([1])).Plus(Score(l.B).mean([0])));
        int drop = InitialBudget - budget;
        var kept = new Dictionary<SvdLayer, bool[]>();
        if (drop <= 0)
        {
            foreach (var l in _layers) kept[l] = l.E.view(-1).ne(Scalars.Of(0.0)).data<bool>().ToArray();
            return kept;
        }
        using var threshold = Scalars.Owned(cat(triplets.Values.ToArray()).kthvalue(drop, 0).values.item<float>());
        foreach (var (layer, score) in triplets)
        {
            var keep = score.gt(threshold);
            layer.E.masked_fill_(keep.logical_not().unsqueeze(1), Scalars.Of(0.0));
            kept[layer] = keep.data<bool>().ToArray();
        }
        return kept;
    }

    /// <summary>Re-applies a fixed pattern (after the final allocation, masked entries must stay zero).</summary>
    internal static void Apply(IReadOnlyDictionary<SvdLayer, bool[]> pattern)
    {
        using var _ = no_grad();
        foreach (var (layer, keep) in pattern)
            layer.E.masked_fill_(tensor(keep).logical_not().unsqueeze(1).to(layer.E.device), Scalars.Of(0.0));
    }
}
