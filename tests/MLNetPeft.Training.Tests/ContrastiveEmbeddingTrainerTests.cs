using MLNetPeft.Architectures;
using MLNetPeft.Retrieval.Embeddings;
using MLNetPeft.Tokenization;
using MLNetPeft.Training;
using MLNetPeft.Training.Embedding;
using MLNetPeft.Tuners.Lora;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Tests;

public class ContrastiveEmbeddingTrainerTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public void TheLossIsCrossEntropyOfScaledCosinesWithTheDiagonalAsTarget()
    {
        using var scope = NewDisposeScope();
        var a = tensor(new float[] { 1, 0, 0, 2, 1, 1 }, [3, 2]);
        var p = tensor(new float[] { 2, 0, 1, 1, 0, 1 }, [3, 2]);
        double scale = 5;
        // By hand: cos(a_i, p_j) from normalised rows; row i's loss is log Σ_j e^{s·cos_ij} − s·cos_ii.
        double[][] av = [[1, 0], [0, 1], [1 / Math.Sqrt(2), 1 / Math.Sqrt(2)]];
        double[][] pv = [[1, 0], [1 / Math.Sqrt(2), 1 / Math.Sqrt(2)], [0, 1]];
        double expected = 0;
        for (int i = 0; i < 3; i++)
        {
            var logits = Enumerable.Range(0, 3).Select(j => scale * (av[i][0] * pv[j][0] + av[i][1] * pv[j][1])).ToArray();
            expected += Math.Log(logits.Sum(Math.Exp)) - logits[i];
        }
        Assert.Equal(expected / 3, ContrastiveEmbeddingTrainer.Loss(a, p, scale).item<float>(), 5);
    }

    [Fact]
    public void LoraOnATinyEncoderLearnsWhichPassageAnswersWhichQuery()
    {
        using var dir = new TempFolder();
        const int topics = 16;
        var vocab = new List<string> { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "about", "this", "says", "text" };
        vocab.AddRange(Enumerable.Range(0, topics).Select(k => $"q{k}"));
        vocab.AddRange(Enumerable.Range(0, topics).Select(k => $"d{k}"));
        var config = TinyModels.Bert();
        config.VocabSize = vocab.Count;
        using (var fresh = new BertModel(config, addPoolingLayer: false)) fresh.SavePretrained(dir.Path);
        File.WriteAllLines(dir.File("vocab.txt"), vocab);
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"do_lower_case": true}""");
        using var encoder = PretrainedModels.LoadBert(dir.Path);
        var embedder = new SentenceEmbedder(encoder, TextTokenizer.FromPretrained(dir.Path), new SentenceEmbedderOptions { MaxLength = 16 });
        // Queries and passages share no word: which passage answers which query must be learned.
        var queries = Enumerable.Range(0, topics).Select(k => $"what about q{k}").ToList();
        var passages = Enumerable.Range(0, topics).Select(k => $"this text says d{k}").ToList();
        var pairs = queries.Zip(passages, (q, d) => new EmbeddingPair(embedder.Tokenize(q), embedder.Tokenize(d))).ToList();
        double Accuracy()
        {
            var q = embedder.Embed(queries);
            var d = embedder.Embed(passages);
            return Enumerable.Range(0, topics).Count(i => Enumerable.Range(0, topics).MaxBy(j => q[i].Zip(d[j], (x, y) => x * y).Sum()) == i) / (double)topics;
        }
        double before = Accuracy();
        using var lora = LoraModel.Apply(encoder, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = ["query", "key", "value", "dense"] }, seed: 1);
        var result = new ContrastiveEmbeddingTrainer(embedder, new TrainingOptions { MaxSteps = 150, BatchSize = 8, LearningRate = 1e-2, WarmupSteps = 5, WeightDecay = 0, Seed = 3 })
            .Train(pairs, validation: pairs);
        double after = Accuracy();
        output.WriteLine($"top-1 query → passage {before:P0} → {after:P0}; loss {result.LossHistory[0]:F3} → {result.LossHistory[^1]:F3}");
        Assert.True(result.LossHistory.TakeLast(10).Average() < 0.5 * result.LossHistory.Take(10).Average());
        Assert.True(after >= 0.75 && after > before + 0.3, $"{before:P0} → {after:P0}");
        Assert.NotNull(result.ValidationLoss);
    }

    [Fact]
    public void BadSettingsAreNamed()
    {
        using var dir = new TempFolder();
        var config = TinyModels.Bert();
        config.VocabSize = 8;
        using (var fresh = new BertModel(config, addPoolingLayer: false)) fresh.SavePretrained(dir.Path);
        File.WriteAllLines(dir.File("vocab.txt"), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"]);
        using var encoder = PretrainedModels.LoadBert(dir.Path);
        var embedder = new SentenceEmbedder(encoder, TextTokenizer.FromPretrained(dir.Path), new SentenceEmbedderOptions { MaxLength = 16 });
        Assert.Throws<ArgumentOutOfRangeException>(() => new ContrastiveEmbeddingTrainer(embedder, new TrainingOptions { BatchSize = 1 }));
        Assert.Equal("scale", Assert.Throws<ArgumentOutOfRangeException>(() => new ContrastiveEmbeddingTrainer(embedder, new TrainingOptions { BatchSize = 4 }, scale: 0)).ParamName);
        var same = new EmbeddingPair([2, 5, 3], [2, 6, 3]);
        Assert.Contains("two different positives", Assert.Throws<ArgumentException>(() =>
            new ContrastiveEmbeddingTrainer(embedder, new TrainingOptions { BatchSize = 4, MaxSteps = 1 }).Train([same, same])).Message);
    }
}
