using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.Architectures;
using MLNetPeft.ML.Classification;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.Tokenization;

namespace MLNetPeft.ML.Tests;

/// <summary>The PEFT text classification trainers on a tiny BERT with a tiny WordPiece vocabulary.</summary>
public class TextClassificationTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly string[] Positive = ["good", "great", "fine", "lovely"], Negative = ["bad", "awful", "poor", "dull"], Neutral = ["plain", "average", "usual", "okay"];
    private static readonly string[] Filler = ["the", "movie", "film", "was", "is", "a", "plot", "acting", "very", "and", "story", "cast"];

    public sealed class Review
    {
        public string Sentence1 { get; set; } = "";
        public string Sentence2 { get; set; } = "";
        public string Sentiment { get; set; } = "";
        public bool Label { get; set; }
    }

    /// <summary>Filler words with one sentiment word somewhere; the class is the sentiment.</summary>
    private static Review[] Reviews(int count, int seed)
    {
        var random = new Random(seed);
        string Sentence(string[] words) =>
            string.Join(' ', Enumerable.Range(0, random.Next(3, 8)).Select(_ => Filler[random.Next(Filler.Length)]).Append(words[random.Next(words.Length)]).OrderBy(_ => random.Next()));
        return Enumerable.Range(0, count).Select(_ =>
        {
            int c = random.Next(3);
            var words = c == 0 ? Positive : c == 1 ? Negative : Neutral;
            bool same = random.Next(2) == 0;
            int other = same ? c : (c + 1 + random.Next(2)) % 3;
            return new Review
            {
                Sentence1 = Sentence(words), Sentence2 = Sentence(other == 0 ? Positive : other == 1 ? Negative : Neutral),
                // Binary label: is the second sentence positive? (So the pair's second segment must reach the model.)
                Sentiment = c == 0 ? "positive" : c == 1 ? "negative" : "neutral", Label = other == 0,
            };
        }).ToArray();
    }

    /// <summary>A freshly initialised (seeded) tiny BERT saved as a checkpoint folder with a WordPiece vocabulary of the task's words.</summary>
    private static (BertModel, TextTokenizer) TinyBert(TempFolder dir)
    {
        var vocab = new[] { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]" }.Concat(Positive).Concat(Negative).Concat(Neutral).Concat(Filler).ToList();
        var config = TinyModels.Bert();
        config.VocabSize = vocab.Count;
        using (var bert = new BertModel(config, addPoolingLayer: false)) bert.SavePretrained(dir.Path);
        File.WriteAllLines(dir.File("vocab.txt"), vocab);
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"do_lower_case": true}""");
        return (PretrainedModels.LoadBert(dir.Path), TextTokenizer.FromPretrained(dir.Path));
    }

    private static PeftTextClassificationOptions Options(BertModel bert, TextTokenizer tokenizer, FineTuningMethod method) => new()
    {
        LabelColumnName = "Label", Sentence1ColumnName = "Sentence1", BaseModel = bert, Tokenizer = tokenizer, Method = method,
        MaxEpochs = method == FineTuningMethod.Full ? 12 : 25, BatchSize = 16, Seed = 1,
        LearningRate = method switch { FineTuningMethod.Full => 2e-3, FineTuningMethod.AdapterTuning => 5e-2, _ => 2e-2 },
        Lora = new() { R = 4, LoraAlpha = 8, TargetModules = ["query", "value"] },
        AdapterTuning = new() { ReductionFactor = 4 },   // a bottleneck of 8 on the 32-wide tiny encoder
    };

    [Theory]
    [InlineData(FineTuningMethod.Lora)]
    [InlineData(FineTuningMethod.Full)]
    [InlineData(FineTuningMethod.AdapterTuning)]
    [InlineData(FineTuningMethod.QLora)]   // merged: the quantised encoder is dequantised and LoRA folded in
    public void MulticlassTrainerLearnsEvaluatesMapsKeysBackAndRoundTrips(FineTuningMethod method)
    {
        using var dir = new TempFolder();
        var (bert, tokenizer) = TinyBert(dir);
        using var encoder = bert;
        var ml = new MLContext(seed: 1);
        var train = ml.Data.LoadFromEnumerable(Reviews(300, 1));
        var test = ml.Data.LoadFromEnumerable(Reviews(120, 2));
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label", "Sentiment")
            .Append(ml.MulticlassClassification.Trainers.PeftTextClassification(Options(bert, tokenizer, method)))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedSentiment", "PredictedLabel"));
        var model = pipeline.Fit(train);
        var scored = model.Transform(test);
        var metrics = ml.MulticlassClassification.Evaluate(scored);
        output.WriteLine($"{method}: micro accuracy {metrics.MicroAccuracy:P1}, macro {metrics.MacroAccuracy:P1}, log-loss {metrics.LogLoss:F3}");
        // Bottlenecks on a frozen random 2-layer encoder learn slower than weight updates; chance is 33 %.
        double required = method == FineTuningMethod.AdapterTuning ? 0.8 : 0.9;
        Assert.True(metrics.MicroAccuracy > required, $"accuracy {metrics.MicroAccuracy:P1}");
        var predicted = scored.GetColumn<string>("PredictedSentiment").ToList();
        Assert.All(predicted, p => Assert.Contains(p, new[] { "positive", "negative", "neutral" }));
        Assert.Equal(metrics.MicroAccuracy, predicted.Zip(scored.GetColumn<string>("Sentiment")).Count(x => x.First == x.Second) / 120.0, 6);

        var path = dir.File("model.zip");
        ml.Model.Save(model, train.Schema, path);
        var loaded = new MLContext(seed: 2).Model.Load(path, out _);
        Assert.Equal(scored.GetColumn<float[]>("Score").Select(s => string.Join(",", s)), loaded.Transform(test).GetColumn<float[]>("Score").Select(s => string.Join(",", s)));
        Assert.Equal(predicted, loaded.Transform(test).GetColumn<string>("PredictedSentiment"));

        var engine = ml.Model.CreatePredictionEngine<Review, Prediction>(loaded);
        var one = engine.Predict(new Review { Sentence1 = "the movie was awful", Sentiment = "negative" });
        Assert.Equal(3, one.Score.Length);
        Assert.Equal(1.0, one.Score.Sum(), 4);
    }

    [Theory]
    [InlineData(FineTuningMethod.AdaLora)]
    [InlineData(FineTuningMethod.Ia3)]
    [InlineData(FineTuningMethod.BitFit)]
    [InlineData(FineTuningMethod.LayerNorm)]
    [InlineData(FineTuningMethod.QLora)]
    [InlineData(FineTuningMethod.PromptTuning)]
    [InlineData(FineTuningMethod.PTuning)]
    [InlineData(FineTuningMethod.PrefixTuning)]
    [InlineData(FineTuningMethod.PTuningV2)]
    public void EveryOtherPeftMethodTrainsAClassifierThatReloadsToTheSameScores(FineTuningMethod method)
    {
        using var dir = new TempFolder();
        var (bert, tokenizer) = TinyBert(dir);
        using var encoder = bert;
        var ml = new MLContext(seed: 1);
        var train = ml.Data.LoadFromEnumerable(Reviews(160, 5));
        var test = ml.Data.LoadFromEnumerable(Reviews(90, 6));
        var options = Options(bert, tokenizer, method);
        options.MaxEpochs = 10;
        options.MergeAdapter = false;   // the adapter and (QLoRA) the quantised encoder are what the zip must carry
        options.PromptTuning.NumVirtualTokens = options.PTuning.NumVirtualTokens = options.PrefixTuning.NumVirtualTokens = 4;
        options.Quantization.BlockSize = 16;
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label", "Sentiment").Append(ml.MulticlassClassification.Trainers.PeftTextClassification(options));
        var model = pipeline.Fit(train);
        var scored = model.Transform(test);
        var metrics = ml.MulticlassClassification.Evaluate(scored);
        output.WriteLine($"{method}: {model.LastTransformer.TrainedParameters:N0} parameters trained, accuracy {metrics.MicroAccuracy:P1}, log-loss {metrics.LogLoss:F3} (chance: 33 %, {Math.Log(3):F3})");
        Assert.True(metrics.MicroAccuracy > 0.5 && metrics.LogLoss < Math.Log(3), $"accuracy {metrics.MicroAccuracy:P1}, log-loss {metrics.LogLoss:F3}");

        var path = dir.File("model.zip");
        ml.Model.Save(model, train.Schema, path);
        var loaded = new MLContext(seed: 2).Model.Load(path, out _);
        Assert.Equal(scored.GetColumn<float[]>("Score").Select(s => string.Join(",", s)), loaded.Transform(test).GetColumn<float[]>("Score").Select(s => string.Join(",", s)));
        using var zip = System.IO.Compression.ZipFile.OpenRead(path);
        var encoderConfig = zip.Entries.Single(e => e.FullName.EndsWith("File.config.json", StringComparison.Ordinal));
        using var reader = new StreamReader(encoderConfig.Open());
        Assert.Equal(method == FineTuningMethod.QLora, reader.ReadToEnd().Contains("\"load_in_4bit\": true", StringComparison.Ordinal));
    }

    public sealed class Prediction
    {
        public float[] Score { get; set; } = [];
        public string PredictedSentiment { get; set; } = "";
    }

    [Fact]
    public void BinaryTrainerOnSentencePairsEvaluatesWithMlNetsEvaluator()
    {
        using var dir = new TempFolder();
        var (bert, tokenizer) = TinyBert(dir);
        using var encoder = bert;
        var ml = new MLContext(seed: 1);
        var options = Options(bert, tokenizer, FineTuningMethod.Full);
        options.Sentence2ColumnName = "Sentence2";
        options.MaxEpochs = 12;
        var model = ml.BinaryClassification.Trainers.PeftTextClassification(options).Fit(ml.Data.LoadFromEnumerable(Reviews(400, 3)));
        var scored = model.Transform(ml.Data.LoadFromEnumerable(Reviews(150, 4)));
        var metrics = ml.BinaryClassification.Evaluate(scored);
        output.WriteLine($"pairs: accuracy {metrics.Accuracy:P1}, AUC {metrics.AreaUnderRocCurve:F3}, F1 {metrics.F1Score:F3}");
        Assert.True(metrics.Accuracy > 0.75, $"accuracy {metrics.Accuracy:P1}");
        Assert.All(scored.GetColumn<float>("Probability"), p => Assert.InRange(p, 0f, 1f));

        var path = dir.File("binary.zip");
        var test = ml.Data.LoadFromEnumerable(Reviews(150, 4));
        ml.Model.Save(model, test.Schema, path);
        var loaded = new MLContext(seed: 2).Model.Load(path, out _).Transform(test);
        Assert.Equal(scored.GetColumn<float>("Score"), loaded.GetColumn<float>("Score"));
        Assert.Equal(scored.GetColumn<bool>("PredictedLabel"), loaded.GetColumn<bool>("PredictedLabel"));
    }

    [Fact]
    public void TheDefaultEncoderIsTheBundledMiniLm()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Reviews(16, 6));
        using var model = ml.BinaryClassification.Trainers.PeftTextClassification(labelColumnName: "Label", sentence1ColumnName: "Sentence1", batchSize: 8, maxEpochs: 1).Fit(data);
        Assert.Equal(2, model.NumberOfClasses);
        Assert.InRange(model.TrainedParameters!.Value, 70_000, 80_000);   // LoRA r=8 on 6 layers' query and value (73,728) + a 384×2 head
        var probabilities = model.Transform(data).GetColumn<float>("Probability").ToList();
        Assert.Equal(16, probabilities.Count);

        // The zip refers to the bundled encoder (package version and SHA-256) instead of holding its 91 MB: adapter and head only.
        using var dir = new TempFolder();
        var path = dir.File("minilm.zip");
        ml.Model.Save(model, data.Schema, path);
        output.WriteLine($"MiniLM classifier zip: {new FileInfo(path).Length:N0} bytes");
        Assert.True(new FileInfo(path).Length < 2_000_000, $"{new FileInfo(path).Length:N0} bytes");
        using (var zip = System.IO.Compression.ZipFile.OpenRead(path))
            Assert.DoesNotContain(zip.Entries, e => e.FullName.EndsWith("File.model.safetensors", StringComparison.Ordinal));
        var loaded = new MLContext(seed: 2).Model.Load(path, out _);
        Assert.Equal(probabilities, loaded.Transform(data).GetColumn<float>("Probability"));
        (loaded as IDisposable)?.Dispose();
    }

    [Fact]
    public void BadColumnsAndOptionsAreNamed()
    {
        using var dir = new TempFolder();
        var (bert, tokenizer) = TinyBert(dir);
        using var encoder = bert;
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Reviews(10, 5));
        var notKey = Options(bert, tokenizer, FineTuningMethod.Lora);
        notKey.LabelColumnName = "Sentiment";
        Assert.Contains("MapValueToKey", Assert.ThrowsAny<ArgumentException>(() => ml.MulticlassClassification.Trainers.PeftTextClassification(notKey).Fit(data)).Message);
        var missing = Options(bert, tokenizer, FineTuningMethod.Lora);
        missing.Sentence1ColumnName = "Text";
        Assert.Contains("Text", Assert.ThrowsAny<ArgumentException>(() => ml.BinaryClassification.Trainers.PeftTextClassification(missing).Fit(data)).Message);
        var quantizedDora = Options(bert, tokenizer, FineTuningMethod.QLora);
        quantizedDora.Lora.UseDora = true;
        Assert.Contains("DoRA", Assert.Throws<ArgumentException>(() => ml.BinaryClassification.Trainers.PeftTextClassification(quantizedDora)).Message);
        var oddBlocks = Options(bert, tokenizer, FineTuningMethod.QLora);
        oddBlocks.Quantization.BlockSize = 7;
        Assert.Equal("BlockSize", Assert.Throws<ArgumentOutOfRangeException>(() => ml.BinaryClassification.Trainers.PeftTextClassification(oddBlocks)).ParamName);
        var noTokenizer = Options(bert, tokenizer, FineTuningMethod.Lora);
        noTokenizer.Tokenizer = null;
        Assert.Contains("Tokenizer", Assert.Throws<ArgumentException>(() => ml.BinaryClassification.Trainers.PeftTextClassification(noTokenizer)).Message);
    }
}
