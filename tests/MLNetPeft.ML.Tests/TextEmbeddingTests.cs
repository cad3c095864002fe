using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.MiniLM;
using MLNetPeft.ML.Retrieval;
using MLNetPeft.Retrieval.Embeddings;

namespace MLNetPeft.ML.Tests;

/// <summary>The EmbedText transform: all-MiniLM-L6-v2 vectors as an ML.NET column, composed with ML.NET trainers, saved and loaded.</summary>
public class TextEmbeddingTests(Xunit.Abstractions.ITestOutputHelper output)
{
    public sealed class Row
    {
        public string Text { get; set; } = "";
        public bool Label { get; set; }
    }

    private static readonly string[] Good = ["a wonderful, moving film", "I loved every minute of it", "brilliant acting and a great story", "delightful and funny",
        "one of the best movies this year", "a joy to watch", "superb, warm and clever", "an excellent, heartfelt drama", "great fun for the whole family", "beautifully made"];
    private static readonly string[] Bad = ["a boring, tedious mess", "I hated every minute of it", "terrible acting and a dull story", "painfully unfunny",
        "one of the worst movies this year", "a chore to sit through", "awful, cold and stupid", "a dreadful, lifeless drama", "a waste of time and money", "badly made"];

    private static Row[] Rows(int from, int count) =>
        [.. Enumerable.Range(from, count).SelectMany(i => new[] { new Row { Text = Good[i % Good.Length], Label = true }, new Row { Text = Bad[i % Bad.Length], Label = false } })];

    [Fact]
    public void TheColumnHoldsTheEmbeddersVectorsAlsoThroughAShuffledCursorAndAPredictionEngine()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(0, 10));
        using var embed = ml.Transforms.Text.EmbedText("Features", "Text").Fit(data);
        Assert.Equal(384, embed.Dimension);
        Assert.Equal(384, ((VectorDataViewType)embed.GetOutputSchema(data.Schema)["Features"].Type).Size);
        var texts = data.GetColumn<string>("Text").ToList();
        var expected = embed.Embedder.Embed(texts);
        var vectors = embed.Transform(data).GetColumn<float[]>("Features").ToList();
        for (int i = 0; i < texts.Count; i++) Assert.True(MaxDifference(expected[i], vectors[i]) < 1e-5, texts[i]);
        // Shuffled rows do not line up with the read-ahead batches: each row is still its own text's vector.
        var shuffled = embed.Transform(ml.Data.ShuffleRows(data, seed: 3));
        foreach (var (text, vector) in shuffled.GetColumn<string>("Text").Zip(shuffled.GetColumn<float[]>("Features")))
            Assert.True(MaxDifference(expected[texts.IndexOf(text)], vector) < 1e-5, text);
        var engine = ml.Model.CreatePredictionEngine<Row, Embedded>(embed);
        Assert.True(MaxDifference(expected[3], engine.Predict(new Row { Text = texts[3] }).Features) < 1e-5);
    }

    [Fact]
    public void AnMlNetTrainerLearnsSentimentFromTheEmbeddings()
    {
        var ml = new MLContext(seed: 1);
        var pipeline = ml.Transforms.Text.EmbedText("Features", "Text")
            // 14 rows of unit-length features: the default L1/L2 of 1 would keep every weight at 0.
            .Append(ml.BinaryClassification.Trainers.LbfgsLogisticRegression(l1Regularization: 0, l2Regularization: 1e-3f));
        // Train on the first seven phrasings of each side, evaluate on the other three.
        var train = ml.Data.LoadFromEnumerable(Rows(0, 7));
        var test = ml.Data.LoadFromEnumerable(Rows(7, 3));
        var model = pipeline.Fit(train);
        var metrics = ml.BinaryClassification.Evaluate(model.Transform(test));
        output.WriteLine($"held-out phrasings: accuracy {metrics.Accuracy:P0}, AUC {metrics.AreaUnderRocCurve:F3}");
        Assert.True(metrics.Accuracy >= 0.8, $"accuracy {metrics.Accuracy:P0}");
        (model.LastTransformer as IDisposable)?.Dispose();
        foreach (var t in model) (t as IDisposable)?.Dispose();
    }

    [Fact]
    public async Task ASavedZipReferencesTheBundledEncoderAndEmbedsIdenticallyInAFreshProcess()
    {
        var ml = new MLContext(seed: 1);
        var rows = new[] { new FreshProcess.Row("The museum opens at nine.", ""), new FreshProcess.Row("Coffee or tea?", ""), new FreshProcess.Row("x", "") };
        var data = ml.Data.LoadFromEnumerable(rows);
        using var embed = ml.Transforms.Text.EmbedText("Features", "Text").Fit(data);
        var scratch = Path.Combine(Path.GetTempPath(), "mlnetpeft-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(scratch);
        try
        {
            var path = Path.Combine(scratch, "embed.zip");
            ml.Model.Save(embed, data.Schema, path);
            Assert.True(new FileInfo(path).Length < 100_000, $"{new FileInfo(path).Length} bytes: the bundled encoder is referenced, not copied");
            var expected = FreshProcess.Columns(embed.Transform(data), ["Features"]);
            Assert.Equal(expected, await FreshProcess.RunAsync(path, rows, ["Features"], scratch));
        }
        finally
        {
            Directory.Delete(scratch, recursive: true);
        }
    }

    [Fact]
    public void AMissingOrNonTextColumnIsNamedAtFit()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(0, 1));
        var missing = ml.Transforms.Text.EmbedText("Features", "Body");
        Assert.Contains("Body", Assert.ThrowsAny<ArgumentException>(() => missing.Fit(data)).Message);
        var notText = ml.Transforms.Text.EmbedText("Features", "Label");
        Assert.Contains("Label", Assert.ThrowsAny<ArgumentException>(() => notText.Fit(data)).Message);
        using var encoder = AllMiniLmL6V2.Load();
        Assert.Equal("tokenizer", Assert.Throws<ArgumentException>(() => ml.Transforms.Text.EmbedText(encoder: encoder)).ParamName);
        Assert.Equal("MaxLength", Assert.Throws<ArgumentOutOfRangeException>(() =>
            ml.Transforms.Text.EmbedText(options: new SentenceEmbedderOptions { MaxLength = 4096 }).Fit(data)).ParamName);
    }

    private static double MaxDifference(float[] a, float[] b) => a.Zip(b).Max(x => Math.Abs(x.First - x.Second));

    public sealed class Embedded
    {
        [VectorType(384)] public float[] Features { get; set; } = [];
    }
}
