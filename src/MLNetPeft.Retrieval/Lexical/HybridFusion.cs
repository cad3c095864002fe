using MLNetPeft.Retrieval.Evaluation;

namespace MLNetPeft.Retrieval.Lexical;

/// <summary>Fusing rankings of the same documents from several retrievers (e.g. BM25 and dense).</summary>
public static class HybridFusion
{
    /// <summary>
    /// Reciprocal rank fusion (Cormack, Clarke and Büttcher 2009): score(d) = Σ over rankings of 1 / (k + rank(d)), ranks
    /// from 1, a document missing from a ranking adding nothing. k = 60 is the paper's. Best first; ties by id.
    /// </summary>
    public static IReadOnlyList<RankedDocument> ReciprocalRank(IReadOnlyList<IReadOnlyList<RankedDocument>> rankings, int top, int k = 60)
    {
        ArgumentNullException.ThrowIfNull(rankings);
        ArgumentOutOfRangeException.ThrowIfLessThan(top, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 0);
        var scores = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var ranking in rankings)
        {
            ArgumentNullException.ThrowIfNull(ranking, nameof(rankings));
            var ordered = RetrievalMetrics.Ranked(ranking);
            for (int r = 0; r < ordered.Count; r++) scores[ordered[r]] = scores.GetValueOrDefault(ordered[r]) + 1.0 / (k + r + 1);
        }
        return Best(scores, top);
    }

    /// <summary>
    /// Weighted score fusion: each ranking's scores min-max normalised to [0, 1] (all 1 when they are equal), then
    /// score(d) = Σ weight · normalised score; a document missing from a ranking adds 0 for it. Best first; ties by id.
    /// </summary>
    public static IReadOnlyList<RankedDocument> WeightedScores(IReadOnlyList<(IReadOnlyList<RankedDocument> Ranking, double Weight)> rankings, int top)
    {
        ArgumentNullException.ThrowIfNull(rankings);
        ArgumentOutOfRangeException.ThrowIfLessThan(top, 1);
        var scores = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var (ranking, weight) in rankings)
        {
            ArgumentNullException.ThrowIfNull(ranking, nameof(rankings));
            if (!double.IsFinite(weight) || weight < 0) throw new ArgumentOutOfRangeException(nameof(rankings), weight, "every weight must be a finite number ≥ 0");
            if (ranking.Count == 0) continue;
            double min = ranking.Min(d => d.Score), max = ranking.Max(d => d.Score);
            foreach (var group in ranking.GroupBy(d => d.DocumentId, StringComparer.Ordinal))
            {
                double best = group.Max(d => d.Score);
                double normalised = max > min ? (best - min) / (max - min) : 1;
                scores[group.Key] = scores.GetValueOrDefault(group.Key) + weight * normalised;
            }
        }
        return Best(scores, top);
    }

    private static List<RankedDocument> Best(Dictionary<string, double> scores, int top) =>
        scores.OrderByDescending(s => s.Value).ThenBy(s => s.Key, StringComparer.Ordinal).Take(top).Select(s => new RankedDocument(s.Key, s.Value)).ToList();
}
