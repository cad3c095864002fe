using MLNetPeft.Retrieval.Evaluation;

namespace MLNetPeft.Retrieval.Tests;

public class RetrievalMetricsTests
{
    // q1: d1 grade 2, d2 and d4 grade 1, d3 judged not relevant; the run ranks d3, d2, d5, d1, d6.
    private static readonly Dictionary<string, int> Q1Grades = new() { ["d1"] = 2, ["d2"] = 1, ["d3"] = 0, ["d4"] = 1 };
    private static readonly RankedDocument[] Q1Run =
        [new("d1", 0.6), new("d3", 0.9), new("d6", 0.5), new("d2", 0.8), new("d5", 0.7)];

    [Fact]
    public void MeasuresOfOneQueryEqualTheValuesWorkedOutByHand()
    {
        var ranking = RetrievalMetrics.Ranked(Q1Run);
        Assert.Equal(["d3", "d2", "d5", "d1", "d6"], ranking);
        // Ideal DCG over all judged documents (grades 2, 1, 1), whether retrieved or not: 2 + 1/log2 3 + 1/log2 4.
        double ideal = 2 + 1 / Math.Log2(3) + 0.5;
        Assert.Equal(1 / Math.Log2(3) / ideal, RetrievalMetrics.Ndcg(ranking, Q1Grades, 3), 12);
        Assert.Equal((1 / Math.Log2(3) + 2 / Math.Log2(5)) / ideal, RetrievalMetrics.Ndcg(ranking, Q1Grades, 5), 12);
        Assert.Equal(0.2015153, RetrievalMetrics.Ndcg(ranking, Q1Grades, 3), 6);
        Assert.Equal(1.0 / 3, RetrievalMetrics.Recall(ranking, Q1Grades, 3), 12);
        Assert.Equal(2.0 / 3, RetrievalMetrics.Recall(ranking, Q1Grades, 5), 12);
        Assert.Equal(0, RetrievalMetrics.ReciprocalRank(ranking, Q1Grades, 1));
        Assert.Equal(0.5, RetrievalMetrics.ReciprocalRank(ranking, Q1Grades, 3), 12);
        // Precision at the relevant ranks 2 and 4, over all three relevant documents.
        Assert.Equal((1.0 / 2) / 3, RetrievalMetrics.AveragePrecision(ranking, Q1Grades, 3), 12);
        Assert.Equal((1.0 / 2 + 2.0 / 4) / 3, RetrievalMetrics.AveragePrecision(ranking, Q1Grades, 5), 12);
    }

    [Fact]
    public void IdealRankingScoresOneAndGradesCountLinearly()
    {
        var grades = new Dictionary<string, int> { ["a"] = 3, ["b"] = 1 };
        Assert.Equal(1.0, RetrievalMetrics.Ndcg(["a", "b"], grades, 10), 12);
        // Swapped: (1 + 3/log2 3) / (3 + 1/log2 3), the gain is the grade itself (trec_eval), not 2^grade − 1.
        Assert.Equal((1 + 3 / Math.Log2(3)) / (3 + 1 / Math.Log2(3)), RetrievalMetrics.Ndcg(["b", "a"], grades, 10), 12);
    }

    [Fact]
    public void TiesAreBrokenByDocumentIdDescendingAsTrecEvalDoes()
    {
        var ranking = RetrievalMetrics.Ranked([new("a", 0.5), new("c", 0.5), new("b", 0.9)]);
        Assert.Equal(["b", "c", "a"], ranking);
    }

    [Fact]
    public void MeansSkipUnjudgedQueriesAndCountAJudgedQueryWithoutResultsAsZero()
    {
        var judgements = new Dictionary<string, IReadOnlyDictionary<string, int>>
        {
            ["q1"] = Q1Grades,
            ["q2"] = new Dictionary<string, int> { ["x"] = 1 },        // judged, but the run has nothing for it
            ["q3"] = new Dictionary<string, int> { ["y"] = 0 },        // no relevant document: not counted
        };
        var run = new Dictionary<string, IReadOnlyList<RankedDocument>> { ["q1"] = Q1Run, ["q3"] = [new("y", 1)] };
        var report = RetrievalMetrics.Evaluate(judgements, run, 5, 3);
        Assert.Equal(2, report.Queries);
        Assert.Equal([3, 5], report.AtK.Select(m => m.K));
        Assert.Equal(RetrievalMetrics.Ndcg(RetrievalMetrics.Ranked(Q1Run), Q1Grades, 5) / 2, report[5].Ndcg, 12);
        Assert.Equal(2.0 / 3 / 2, report[5].Recall, 12);
        Assert.Equal(0.5 / 2, report[3].Mrr, 12);
        Assert.Equal(1.0 / 3 / 2, report[5].Map, 12);
        Assert.Equal(2.0 / 5 / 2, report[5].Precision, 12);
        Assert.Throws<KeyNotFoundException>(() => report[10]);
    }

    [Fact]
    public void BadArgumentsAreNamed()
    {
        var judgements = new Dictionary<string, IReadOnlyDictionary<string, int>> { ["q"] = new Dictionary<string, int> { ["d"] = 0 } };
        var run = new Dictionary<string, IReadOnlyList<RankedDocument>>();
        Assert.Contains("grade > 0", Assert.Throws<ArgumentException>(() => RetrievalMetrics.Evaluate(judgements, run, 10)).Message);
        Assert.Equal("cutoffs", Assert.Throws<ArgumentOutOfRangeException>(() => RetrievalMetrics.Evaluate(judgements, run, 0)).ParamName);
        Assert.Contains("NaN", Assert.Throws<ArgumentException>(() => RetrievalMetrics.Ranked([new("d", double.NaN)])).Message);
    }
}
