using MLNetPeft.Retrieval.Evaluation;
using MLNetPeft.Retrieval.Lexical;

namespace MLNetPeft.Retrieval.Tests;

public class Bm25IndexTests
{
    // Lengths 1, 4 and 4: Lucene 4.8 stores a length as 1/√length in one byte, exact for these.
    private static readonly (string, string)[] Documents = [("d1", "cat"), ("d2", "cat dog fish bird"), ("d3", "dog dog dog dog")];

    /// <summary>BM25 by hand: idf = ln(1 + (N − n + 0.5)/(n + 0.5)), tf part = f(k1 + 1)/(f + k1(1 − b + b·dl/avgdl)).</summary>
    private static double Bm25(double f, double n, double total, double length, double averageLength, double k1 = 1.2, double b = 0.75) =>
        Math.Log(1 + (total - n + 0.5) / (n + 0.5)) * f * (k1 + 1) / (f + k1 * (1 - b + b * length / averageLength));

    [Fact]
    public void ScoresAreBm25AsWorkedOutByHandNotLucenesDefaultTfIdf()
    {
        using var index = Bm25Index.InMemory();
        index.AddOrReplace(Documents);
        var hits = index.Search("cat", 10);
        Assert.Equal(["d1", "d2"], hits.Select(h => h.DocumentId));
        Assert.Equal(Bm25(1, 2, 3, 1, 3), hits[0].Score, 4);   // 0.6463
        Assert.Equal(Bm25(1, 2, 3, 4, 3), hits[1].Score, 4);   // 0.4136
        // Two query terms: the scores add up.
        var both = index.Search("cat dog", 10).ToDictionary(h => h.DocumentId, h => h.Score);
        Assert.Equal(Bm25(1, 2, 3, 4, 3) + Bm25(1, 2, 3, 4, 3), both["d2"], 4);
        Assert.Equal(Bm25(4, 2, 3, 4, 3), both["d3"], 4);
    }

    [Fact]
    public void K1AndBAreTheOnesGiven()
    {
        using var index = Bm25Index.InMemory(new Bm25Options { K1 = 2.0f, B = 0 });
        index.AddOrReplace(Documents);
        var hits = index.Search("cat", 10);
        Assert.Equal(Bm25(1, 2, 3, 4, 3, k1: 2, b: 0), hits.Single(h => h.DocumentId == "d2").Score, 4);
        Assert.Equal(hits[0].Score, hits[1].Score, 6);   // b = 0: length does not matter
        Assert.Equal("B", Assert.Throws<ArgumentOutOfRangeException>(() => Bm25Index.InMemory(new Bm25Options { B = 2 })).ParamName);
    }

    [Fact]
    public void EnglishAnalysisStemsAndDropsStopWords()
    {
        using var index = Bm25Index.InMemory();
        Assert.Equal(["run", "fast", "dog"], index.Terms("The running of the fast dogs"));
        index.AddOrReplace([("a", "She runs every morning"), ("b", "Dogs bark")]);
        Assert.Equal(["a"], index.Search("running", 5).Select(h => h.DocumentId));
        Assert.Empty(index.Search("the of and", 5));
    }

    [Fact]
    public void DocumentsAreReplacedAndDeletedByIdAndAFolderIndexReopens()
    {
        var folder = Path.Combine(Path.GetTempPath(), "mlnetpeft-tests", Guid.NewGuid().ToString("N"));
        try
        {
            using (var index = Bm25Index.Open(folder))
            {
                index.AddOrReplace(Documents);
                index.AddOrReplace([("d1", "bird")]);
                Assert.Equal(["d2"], index.Search("cat", 5).Select(h => h.DocumentId));
                index.Delete(["d3", "missing"]);
                Assert.Equal(2, index.Count);
            }
            using var reopened = Bm25Index.Open(folder);
            Assert.Equal(2, reopened.Count);
            Assert.Equal(["d1", "d2"], reopened.Search("bird", 5).Select(h => h.DocumentId).Order());
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void ReciprocalRankFusionAddsOneOverKPlusRank()
    {
        IReadOnlyList<RankedDocument> a = [new("x", 3), new("y", 2), new("z", 1)];
        IReadOnlyList<RankedDocument> b = [new("z", 9), new("x", 5)];
        var fused = HybridFusion.ReciprocalRank([a, b], top: 10);
        Assert.Equal(["x", "z", "y"], fused.Select(d => d.DocumentId));
        Assert.Equal(1.0 / 61 + 1.0 / 62, fused[0].Score, 12);
        Assert.Equal(1.0 / 63 + 1.0 / 61, fused[1].Score, 12);
        Assert.Equal(1.0 / 62, fused[2].Score, 12);
        Assert.Equal(2, HybridFusion.ReciprocalRank([a, b], top: 2).Count);
    }

    [Fact]
    public void WeightedFusionAddsMinMaxNormalisedScores()
    {
        IReadOnlyList<RankedDocument> a = [new("x", 3), new("y", 2), new("z", 1)];
        IReadOnlyList<RankedDocument> b = [new("z", 9), new("x", 5)];
        var fused = HybridFusion.WeightedScores([(a, 0.3), (b, 0.7)], top: 10);
        Assert.Equal(["z", "x", "y"], fused.Select(d => d.DocumentId));
        Assert.Equal(0.7, fused[0].Score, 12);
        Assert.Equal(0.3, fused[1].Score, 12);
        Assert.Equal(0.15, fused[2].Score, 12);
        Assert.Throws<ArgumentOutOfRangeException>(() => HybridFusion.WeightedScores([(a, -1)], top: 1));
    }
}
