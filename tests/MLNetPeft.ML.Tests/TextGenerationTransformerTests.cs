using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.Architectures;
using MLNetPeft.BaseModel;
using MLNetPeft.Generation;
using MLNetPeft.ML.Generation;

namespace MLNetPeft.ML.Tests;

public class TextGenerationTransformerTests
{
    public sealed class Input
    {
        public string Text { get; set; } = "";
        public float Id { get; set; }
    }

    public sealed class Output
    {
        public string Text { get; set; } = "";
        public string GeneratedText { get; set; } = "";
        public string Copy { get; set; } = "";
    }

    private static readonly Input[] Rows =
    [
        new() { Text = "Count from 3 to 7:", Id = 1 },
        new() { Text = "One day,", Id = 2 },
        new() { Text = "7 plus 5 is", Id = 3 },
    ];

    private static readonly GenerationOptions Greedy = new() { MaxNewTokens = 12, StopStrings = ["."] };

    /// <summary>A transformer owns only what it created or loaded: disposing it leaves the caller's model usable.</summary>
    [Fact]
    public void DisposingTheTransformerLeavesTheCallersModelUsable()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows);
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        var fitted = ml.Transforms.CopyColumns("Prompt", "Text").Append(ml.Transforms.Text.GenerateText(model, tokenizer, options: Greedy)).Fit(data);
        var generated = fitted.Transform(data).GetColumn<string>("GeneratedText").First();
        fitted.LastTransformer.Dispose();
        Assert.All(model.parameters(), p => Assert.False(p.IsInvalid));
        Assert.Equal(generated, new TextGenerator(model, tokenizer).Generate(Rows[0].Text, Greedy).Text);
    }

    [Fact]
    public void GeneratesInAChainWithBuiltInTransformsAndRoundTripsThroughModelSave()
    {
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows);
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        var expected = new TextGenerator(model, tokenizer).Generate(Rows.Select(r => r.Text).ToList(), Greedy).Select(r => r.Text).ToList();

        var pipeline = ml.Transforms.CopyColumns("Prompt", "Text")
            .Append(ml.Transforms.Text.GenerateText(model, tokenizer, options: Greedy))
            .Append(ml.Transforms.CopyColumns("Copy", "GeneratedText"));
        var fitted = pipeline.Fit(data);
        var generated = fitted.Transform(data).GetColumn<string>("GeneratedText").ToList();
        Assert.Equal(expected, generated);
        Assert.Equal(generated, fitted.Transform(data).GetColumn<string>("Copy"));

        var path = dir.File("model.zip");
        ml.Model.Save(fitted, data.Schema, path);
        var fresh = new MLContext(seed: 2);
        var loaded = fresh.Model.Load(path, out var inputSchema);
        Assert.Equal(data.Schema.Count, inputSchema.Count);
        Assert.Equal(generated, loaded.Transform(fresh.Data.LoadFromEnumerable(Rows)).GetColumn<string>("GeneratedText"));

        var engine = fresh.Model.CreatePredictionEngine<Input, Output>(loaded);
        var prediction = engine.Predict(Rows[0]);
        Assert.Equal(generated[0], prediction.GeneratedText);
        Assert.Equal(generated[0], prediction.Copy);
    }

    [Fact]
    public async Task ASavedModelLoadsInAFreshProcessThatNeverBuiltTheEstimator()
    {
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows);
        using var model = BundledBaseModel.Load();
        var fitted = ml.Transforms.CopyColumns("Prompt", "Text")
            .Append(ml.Transforms.Text.GenerateText(model, BundledBaseModel.LoadTokenizer(), options: Greedy))
            .Append(ml.Transforms.CopyColumns("Copy", "GeneratedText")).Fit(data);
        var expected = FreshProcess.Columns(fitted.Transform(data), ["Copy"]);
        var path = dir.File("model.zip");
        ml.Model.Save(fitted, data.Schema, path);
        Assert.Equal(expected, await FreshProcess.RunAsync(path, Rows.Select(r => new FreshProcess.Row(r.Text, "")).ToList(), ["Copy"], dir.Path));
    }

    [Fact]
    public void MissingOrMistypedPromptColumnsAreNamed()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows);
        using var model = BundledBaseModel.Load();
        var estimator = ml.Transforms.Text.GenerateText(model, BundledBaseModel.LoadTokenizer(), inputColumnName: "Question");
        var missing = Assert.ThrowsAny<ArgumentException>(() => estimator.Fit(data));
        Assert.Contains("Question", missing.Message);

        var wrongType = ml.Transforms.Text.GenerateText(model, BundledBaseModel.LoadTokenizer(), inputColumnName: "Id");
        var e = Assert.ThrowsAny<ArgumentException>(() => wrongType.Fit(data));
        Assert.Contains("Id", e.Message);
        Assert.Contains("String", e.Message);
    }

    /// <summary>
    /// Checkpoint files go into and out of the zip in chunks (a 1 MB buffer; 4 kB here, so the weights take many): the
    /// path that carries files over 2 GiB without holding them in memory. What comes out is byte for byte what went in.
    /// </summary>
    [Fact]
    public void CheckpointFilesStreamThroughTheZipInChunks()
    {
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows);
        using var model = BundledBaseModel.Load();
        var weights = File.ReadAllBytes(Path.Combine(BundledBaseModel.Folder, "model.safetensors"));
        Assert.True(weights.Length > 100 * 4096);
        var previous = MLNetPeft.ML.Persistence.StoredFolder.ChunkBytes;
        MLNetPeft.ML.Persistence.StoredFolder.ChunkBytes = 4096;
        try
        {
            using var fitted = ml.Transforms.Text.GenerateText(model, BundledBaseModel.LoadTokenizer(), inputColumnName: "Text", options: Greedy).Fit(data);
            var expected = fitted.Transform(data).GetColumn<string>("GeneratedText").ToList();
            var path = dir.File("chunked.zip");
            ml.Model.Save(fitted, data.Schema, path);
            using (var zip = System.IO.Compression.ZipFile.OpenRead(path))
            using (var stream = zip.Entries.Single(e => e.FullName.EndsWith("File.model.safetensors", StringComparison.Ordinal)).Open())
            {
                using var copy = new MemoryStream();
                stream.CopyTo(copy);
                Assert.True(copy.ToArray().AsSpan().SequenceEqual(weights), "the zip's weights stream differs from the checkpoint file");
            }
            using var loaded = (TextGenerationTransformer)new MLContext(seed: 2).Model.Load(path, out _);
            Assert.Equal(expected, loaded.Transform(data).GetColumn<string>("GeneratedText"));
        }
        finally
        {
            MLNetPeft.ML.Persistence.StoredFolder.ChunkBytes = previous;
        }
    }

    [Fact]
    public void ACorruptModelZipFailsToLoadClearly()
    {
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows);
        using var model = BundledBaseModel.Load();
        var fitted = ml.Transforms.CopyColumns("Prompt", "Text").Append(ml.Transforms.Text.GenerateText(model, BundledBaseModel.LoadTokenizer(), options: Greedy)).Fit(data);
        var path = dir.File("model.zip");
        ml.Model.Save(fitted, data.Schema, path);
        var bytes = File.ReadAllBytes(path);

        // A cut weights stream inside an intact zip: the zip's recorded length and SHA-256 name the file.
        var damaged = dir.File("damaged.zip");
        File.WriteAllBytes(damaged, bytes);
        using (var zip = System.IO.Compression.ZipFile.Open(damaged, System.IO.Compression.ZipArchiveMode.Update))
        {
            var entry = zip.Entries.Single(e => e.FullName.EndsWith("File.model.safetensors", StringComparison.Ordinal));
            var name = entry.FullName;
            byte[] weights;
            using (var s = entry.Open()) { using var m = new MemoryStream(); s.CopyTo(m); weights = m.ToArray(); }
            entry.Delete();
            using var w = zip.CreateEntry(name).Open();
            w.Write(weights, 0, weights.Length - 100);
        }
        var invalid = Assert.ThrowsAny<Exception>(() => new MLContext().Model.Load(damaged, out _));
        var messages = string.Join(" | ", ExceptionChain.Flatten(invalid).Select(x => x.Message));
        Assert.Contains("'model.safetensors' ends after", messages);
        Assert.IsType<InvalidDataException>(ExceptionChain.Flatten(invalid).Last(x => x.Message.Contains("model.safetensors", StringComparison.Ordinal)));

        // A truncated zip.
        File.WriteAllBytes(path, bytes[..(bytes.Length / 2)]);
        var truncated = Assert.Throws<FormatException>(() => new MLContext().Model.Load(path, out _));
        Assert.Contains("zip", truncated.Message);
    }
}
