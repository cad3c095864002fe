using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.ML.Retrieval;
using MLNetPeft.Retrieval.Retrievers;

namespace MLNetPeft.ML.Tests;

/// <summary>The retrieval stage as an ML.NET transform: a corpus indexed at Fit, passages per query row, saved and loaded.</summary>
public class RetrievalTests
{
    public sealed class Document
    {
        public string Id { get; set; } = "";
        public string Text { get; set; } = "";
    }

    public sealed class Question
    {
        public string Text { get; set; } = "";
    }

    internal static readonly Document[] Corpus =
    [
        new() { Id = "etna", Text = "Mount Etna is an active volcano on the east coast of Sicily; its eruptions send lava towards Catania." },
        new() { Id = "violin", Text = "A violin has four strings tuned in fifths and is played with a bow made of horsehair." },
        new() { Id = "sourdough", Text = "Sourdough bread rises with wild yeast and lactic acid bacteria instead of baker's yeast." },
        new() { Id = "iss", Text = "The International Space Station circles the Earth about every ninety minutes at an altitude of 400 km." },
    ];

    internal static readonly Question[] Questions =
        [new() { Text = "Which volcano erupts near Catania?" }, new() { Text = "How many strings does a violin have?" }, new() { Text = "What makes sourdough rise?" }];

    private static RetrievalOptions Options(RetrievalMode mode = RetrievalMode.Dense) => new() { QueryColumnName = "Text", Top = 2, Mode = mode };

    [Theory]
    [InlineData(RetrievalMode.Dense)]
    [InlineData(RetrievalMode.Hybrid)]
    public void EachQueryRowGetsItsPassagesBestFirst(RetrievalMode mode)
    {
        var ml = new MLContext(seed: 1);
        using var retrieval = ml.Retrieval().Retrieve(ml.Data.LoadFromEnumerable(Corpus), Options(mode)).Fit(ml.Data.LoadFromEnumerable(Questions));
        var output = retrieval.Transform(ml.Data.LoadFromEnumerable(Questions));
        var ids = output.GetColumn<string[]>("PassageIds").ToList();
        Assert.Equal(["etna", "violin", "sourdough"], ids.Select(i => i[0]));
        Assert.All(ids, i => Assert.Equal(2, i.Length));
        var passages = output.GetColumn<string[]>("Passages").ToList();
        Assert.Contains("Catania", passages[0][0]);
        var scores = output.GetColumn<float[]>("PassageScores").ToList();
        Assert.All(scores, s => Assert.True(s[0] >= s[1]));
    }

    [Fact]
    public async Task ASavedPipelineRetrievesTheSameInAFreshProcess()
    {
        var ml = new MLContext(seed: 1);
        var rows = Questions.Select(q => new FreshProcess.Row(q.Text, "")).ToArray();
        var data = ml.Data.LoadFromEnumerable(rows);
        using var retrieval = ml.Retrieval().Retrieve(ml.Data.LoadFromEnumerable(Corpus), Options()).Fit(data);
        var scratch = Path.Combine(Path.GetTempPath(), "mlnetpeft-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(scratch);
        try
        {
            var path = Path.Combine(scratch, "retrieval.zip");
            ml.Model.Save(retrieval, data.Schema, path);
            string[] columns = ["PassageIds", "Passages", "PassageScores"];
            Assert.Equal(FreshProcess.Columns(retrieval.Transform(data), columns), await FreshProcess.RunAsync(path, rows, columns, scratch));
        }
        finally
        {
            Directory.Delete(scratch, recursive: true);
        }
    }

    [Fact]
    public void BadColumnsAndAnEmptyCorpusAreNamedAtFit()
    {
        var ml = new MLContext(seed: 1);
        var corpus = ml.Data.LoadFromEnumerable(Corpus);
        var questions = ml.Data.LoadFromEnumerable(Questions);
        Assert.Contains("Query", Assert.ThrowsAny<ArgumentException>(() => ml.Retrieval().Retrieve(corpus).Fit(questions)).Message);
        var noText = Options();
        noText.DocumentTextColumnName = "Body";
        Assert.Contains("Body", Assert.ThrowsAny<ArgumentException>(() => ml.Retrieval().Retrieve(corpus, noText).Fit(questions)).Message);
        var empty = ml.Data.LoadFromEnumerable(Array.Empty<Document>());
        Assert.Contains("empty", Assert.ThrowsAny<ArgumentException>(() => ml.Retrieval().Retrieve(empty, Options()).Fit(questions)).Message);
        Assert.Equal("Top", Assert.Throws<ArgumentOutOfRangeException>(() => ml.Retrieval().Retrieve(corpus, new RetrievalOptions { Top = 0 })).ParamName);
    }
}
