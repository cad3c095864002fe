namespace MLNetPeft.Retrieval.Evaluation;

/// <summary>One retrieved document of a query's ranking: its id and the score it was ranked by.</summary>
public readonly record struct RankedDocument(string DocumentId, double Score);

/// <summary>The mean of each measure at one cut-off k over the judged queries.</summary>
public sealed record RetrievalMetricsAtK(int K, double Ndcg, double Recall, double Mrr, double Map, double Precision);

/// <summary>Figures of one run: the measures at each cut-off and the number of queries they average over.</summary>
public sealed record RetrievalReport(int Queries, IReadOnlyList<RetrievalMetricsAtK> AtK)
{
    /// <summary>The measures at cut-off <paramref name="k"/>.</summary>
    public RetrievalMetricsAtK this[int k] => AtK.FirstOrDefault(m => m.K == k)
        ?? throw new KeyNotFoundException($"No figures at k = {k}; the report has k = {string.Join(", ", AtK.Select(m => m.K))}.");
}

/// <summary>
/// Information-retrieval measures with the semantics of trec_eval / pytrec_eval as BEIR uses them:
/// nDCG@k with linear gain (the judged grade) and the ideal DCG over <em>all</em> judged documents of the query, not
/// only the retrieved ones; Recall@k = relevant retrieved in the top k / all relevant; MRR@k = 1 / rank of the first
/// relevant document in the top k; MAP@k = Σ precision at each relevant rank ≤ k / all relevant (trec_eval's map_cut).
/// A document is relevant when its grade is above 0. A ranking is ordered by score, ties by document id descending
/// (trec_eval's order). Queries without a relevant judged document are left out; a judged query the run has no
/// ranking for scores 0 (trec_eval -c).
/// </summary>
public static class RetrievalMetrics
{
    /// <param name="judgements">query id → (document id → graded relevance).</param>
    /// <param name="run">query id → the retrieved documents with their scores (any order).</param>
    /// <param name="cutoffs">The k to report (e.g. 1, 10, 100).</param>
    public static RetrievalReport Evaluate(IReadOnlyDictionary<string, IReadOnlyDictionary<string, int>> judgements,
        IReadOnlyDictionary<string, IReadOnlyList<RankedDocument>> run, params int[] cutoffs)
    {
        ArgumentNullException.ThrowIfNull(judgements);
        ArgumentNullException.ThrowIfNull(run);
        if (cutoffs is null || cutoffs.Length == 0) throw new ArgumentException("Give at least one cut-off k.", nameof(cutoffs));
        if (cutoffs.Any(k => k < 1)) throw new ArgumentOutOfRangeException(nameof(cutoffs), string.Join(", ", cutoffs), "every k must be at least 1");
        var judged = judgements.Where(q => q.Value.Values.Any(g => g > 0)).ToList();
        if (judged.Count == 0) throw new ArgumentException("No query has a relevant judged document (grade > 0).", nameof(judgements));
        var sums = cutoffs.ToDictionary(k => k, _ => new double[5]);
        foreach (var (query, grades) in judged)
        {
            var ranking = run.TryGetValue(query, out var r) ? Ranked(r) : [];
            foreach (var k in cutoffs)
            {
                var s = sums[k];
                s[0] += Ndcg(ranking, grades, k);
                s[1] += Recall(ranking, grades, k);
                s[2] += ReciprocalRank(ranking, grades, k);
                s[3] += AveragePrecision(ranking, grades, k);
                s[4] += ranking.Take(k).Count(d => Grade(grades, d) > 0) / (double)k;
            }
        }
        return new RetrievalReport(judged.Count, cutoffs.Distinct().Order().Select(k =>
        {
            var s = sums[k];
            return new RetrievalMetricsAtK(k, s[0] / judged.Count, s[1] / judged.Count, s[2] / judged.Count, s[3] / judged.Count, s[4] / judged.Count);
        }).ToList());
    }

    /// <summary>The document ids of a ranking in trec_eval's order: score descending, ties by id descending (ordinal).</summary>
    public static IReadOnlyList<string> Ranked(IReadOnlyList<RankedDocument> documents)
    {
        ArgumentNullException.ThrowIfNull(documents);
        if (documents.Any(d => double.IsNaN(d.Score))) throw new ArgumentException("A retrieved document has a NaN score.", nameof(documents));
        return documents.OrderByDescending(d => d.Score).ThenByDescending(d => d.DocumentId, StringComparer.Ordinal)
            .Select(d => d.DocumentId).Distinct().ToList();
    }

    /// <summary>nDCG@k of one ranking: Σ grade / log₂(rank + 1) over the top k, over the same sum for the ideal order of every judged document.</summary>
    public static double Ndcg(IReadOnlyList<string> ranking, IReadOnlyDictionary<string, int> grades, int k)
    {
        double dcg = ranking.Take(k).Select((d, i) => Math.Max(0, Grade(grades, d)) / Math.Log2(i + 2)).Sum();
        double ideal = grades.Values.Where(g => g > 0).OrderDescending().Take(k).Select((g, i) => g / Math.Log2(i + 2)).Sum();
        return ideal == 0 ? 0 : dcg / ideal;
    }

    /// <summary>Relevant documents in the top k over all relevant judged documents.</summary>
    public static double Recall(IReadOnlyList<string> ranking, IReadOnlyDictionary<string, int> grades, int k)
    {
        int relevant = grades.Values.Count(g => g > 0);
        return relevant == 0 ? 0 : ranking.Take(k).Count(d => Grade(grades, d) > 0) / (double)relevant;
    }

    /// <summary>1 / the rank of the first relevant document in the top k; 0 when none is there.</summary>
    public static double ReciprocalRank(IReadOnlyList<string> ranking, IReadOnlyDictionary<string, int> grades, int k)
    {
        int i = 0;
        foreach (var d in ranking.Take(k))
        {
            i++;
            if (Grade(grades, d) > 0) return 1.0 / i;
        }
        return 0;
    }

    /// <summary>Σ precision@rank over the ranks ≤ k that hold a relevant document, over all relevant judged documents.</summary>
    public static double AveragePrecision(IReadOnlyList<string> ranking, IReadOnlyDictionary<string, int> grades, int k)
    {
        int relevant = grades.Values.Count(g => g > 0);
        if (relevant == 0) return 0;
        double sum = 0;
        int hits = 0, rank = 0;
        foreach (var d in ranking.Take(k))
        {
            rank++;
            if (Grade(grades, d) <= 0) continue;
            hits++;
            sum += hits / (double)rank;
        }
        return sum / relevant;
    }

    private static int Grade(IReadOnlyDictionary<string, int> grades, string document) => grades.TryGetValue(document, out var g) ? g : 0;
}
