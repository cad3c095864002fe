using Microsoft.ML;
using MLNetPeft.ML.Evaluation;

namespace MLNetPeft.ML.Tests;

public class EvaluationTests
{
    public sealed class Row
    {
        public string Response { get; set; } = "";
        public string GeneratedText { get; set; } = "";
    }

    [Fact]
    public void ExactAndContainsMatchCompareNormalisedText()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(new[]
        {
            new Row { Response = "Varn", GeneratedText = " varn." },                  // exact after normalisation
            new Row { Response = "the red fox", GeneratedText = "The  red fox!" },    // exact
            new Row { Response = "soup", GeneratedText = "hot soup today" },          // contains only
            new Row { Response = "18", GeneratedText = "81" },                        // neither
        });
        var metrics = ml.TextGeneration().Evaluate(data);
        Assert.Equal(0.5, metrics.ExactMatch, 12);
        Assert.Equal(0.75, metrics.ContainsMatch, 12);
        Assert.Null(metrics.Perplexity);
        Assert.Equal(4, metrics.RowCount);
        Assert.Equal("hello world", TextGenerationCatalog.Normalize("  Hello,\n WORLD. "));
    }

    [Fact]
    public void MissingColumnsAndEmptyDataAreNamed()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(new[] { new Row { Response = "a", GeneratedText = "a" } });
        Assert.Contains("Answer", Assert.ThrowsAny<ArgumentException>(() => ml.TextGeneration().Evaluate(data, labelColumnName: "Answer")).Message);
        Assert.Contains("no rows", Assert.ThrowsAny<ArgumentException>(() => ml.TextGeneration().Evaluate(ml.Data.LoadFromEnumerable(Array.Empty<Row>()))).Message);
    }
}
