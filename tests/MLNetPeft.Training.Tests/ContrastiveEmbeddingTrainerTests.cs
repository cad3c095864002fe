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
    public void WithHardNegativesEachAnchorIsAlsoScoredAgainstEveryNegative()
    {
        using var scope = NewDisposeScope();
        var a = tensor(new float[] { 1, 0, 0, 2 }, [2, 2]);
        var p = tensor(new float[] { 3, 0, 1, 1 }, [2, 2]);
        var n = tensor(new float[] { 0, 1, -1, 0 }, [2, 2]);
        double scale = 4;
        // By hand: candidates p0, p1, n0, n1 (normalised); row i's loss is log Σ_j e^{s·cos(a_i, c_j)} − s·cos(a_i, p_i).
        double r = 1 / Math.Sqrt(2);
        double[][] av = [[1, 0], [0, 1]];
        double[][] cv = [[1, 0], [r, r], [0, 1], [-1, 0]];
        double expected = 0;
        for (int i = 0; i < 2; i++)
        {
            var logits = cv.Select(c => scale * (av[i][0] * c[0] + av[i][1] * c[1])).ToArray();
            expected += Math.Log(logits.Sum(Math.Exp)) - logits[i];
        }
        Assert.Equal(expected / 2, ContrastiveEmbeddingTrainer.Loss(a, p, scale, n).item<float>(), 5);
        // The negatives only add terms to the normaliser: the loss is larger than without them.
        Assert.True(ContrastiveEmbeddingTrainer.Loss(a, p, scale, n).item<float>() > ContrastiveEmbeddingTrainer.Loss(a, p, scale).item<float>());
    }

    [Fact]
    public void LoraOnATinyEncoderLearnsWhichPassageAnswersWhichQuery()
    {
        using var dir = new TempFolder();
        const int topics = 16;
        var (encoder, embedder) = TinyEncoder(dir, ["what", "about", "this", "says", "text", .. Topics(topics, "q"), .. Topics(topics, "d")]);
        using var _ = encoder;
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
    public void TrainingOnTripletsRanksEachAnswerAboveItsHardNegative()
    {
        // Each query "what about qK" has the answer "qK text says dK" and a hard negative "qK text says nothing",
        // which shares the query's own word; in-batch negatives never show the encoder that pair.
        using var dir = new TempFolder();
        const int topics = 12;
        var (encoder, embedder) = TinyEncoder(dir, ["what", "about", "this", "says", "text", "nothing", .. Topics(topics, "q"), .. Topics(topics, "d")]);
        using var _ = encoder;
        var queries = Enumerable.Range(0, topics).Select(k => $"what about q{k}").ToList();
        var answers = Enumerable.Range(0, topics).Select(k => $"q{k} text says d{k}").ToList();
        var decoys = Enumerable.Range(0, topics).Select(k => $"q{k} text says nothing").ToList();
        var triplets = Enumerable.Range(0, topics).Select(k => new EmbeddingPair(embedder.Tokenize(queries[k]), embedder.Tokenize(answers[k]), embedder.Tokenize(decoys[k]))).ToList();
        double AnswerBeatsDecoy()
        {
            var q = embedder.Embed(queries);
            var a = embedder.Embed(answers);
            var d = embedder.Embed(decoys);
            static double Dot(float[] x, float[] y) => x.Zip(y, (u, v) => (double)u * v).Sum();
            return Enumerable.Range(0, topics).Count(k => Dot(q[k], a[k]) > Dot(q[k], d[k])) / (double)topics;
        }
        double before = AnswerBeatsDecoy();
        using var lora = LoraModel.Apply(encoder, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = ["query", "key", "value", "dense"] }, seed: 1);
        var result = new ContrastiveEmbeddingTrainer(embedder, new TrainingOptions { MaxSteps = 120, BatchSize = 6, LearningRate = 1e-2, WarmupSteps = 5, WeightDecay = 0, Seed = 3 })
            .Train(triplets, validation: triplets);
        double after = AnswerBeatsDecoy();
        output.WriteLine($"answer ranked above its decoy {before:P0} → {after:P0}; loss {result.LossHistory[0]:F3} → {result.LossHistory[^1]:F3}");
        Assert.True(after == 1.0 && after > before, $"{before:P0} → {after:P0}");
        Assert.NotNull(result.ValidationLoss);
    }

    [Fact]
    public void BadSettingsAreNamed()
    {
        using var dir = new TempFolder();
        var (encoder, embedder) = TinyEncoder(dir, ["a", "b", "c"]);
        using var _ = encoder;
        Assert.Throws<ArgumentOutOfRangeException>(() => new ContrastiveEmbeddingTrainer(embedder, new TrainingOptions { BatchSize = 1 }));
        Assert.Equal("scale", Assert.Throws<ArgumentOutOfRangeException>(() => new ContrastiveEmbeddingTrainer(embedder, new TrainingOptions { BatchSize = 4 }, scale: 0)).ParamName);
        var same = new EmbeddingPair([2, 5, 3], [2, 6, 3]);
        Assert.Contains("two different positives", Assert.Throws<ArgumentException>(() =>
            new ContrastiveEmbeddingTrainer(embedder, new TrainingOptions { BatchSize = 4, MaxSteps = 1 }).Train([same, same])).Message);
        var trainer = new ContrastiveEmbeddingTrainer(embedder, new TrainingOptions { BatchSize = 4, MaxSteps = 1 });
        var withNegative = new EmbeddingPair([2, 5, 3], [2, 6, 3], [2, 7, 3]);
        Assert.Contains("every pair has a negative or none", Assert.Throws<ArgumentException>(() => trainer.Train([withNegative, new EmbeddingPair([2, 7, 3], [2, 5, 3])])).Message);
        Assert.Contains("negative equals its positive", Assert.Throws<ArgumentException>(() => trainer.Train([withNegative, new EmbeddingPair([2, 7, 3], [2, 5, 3], [2, 5, 3])])).Message);
        Assert.Contains("empty anchor, positive or negative", Assert.Throws<ArgumentException>(() => trainer.Train([withNegative, new EmbeddingPair([2, 7, 3], [2, 5, 3], [])])).Message);
    }

    private static IEnumerable<string> Topics(int count, string prefix) => Enumerable.Range(0, count).Select(k => $"{prefix}{k}");

    // A tiny random BERT with BERT's special tokens and the given words as its vocabulary, saved and loaded as a checkpoint.
    private static (BertModel Encoder, SentenceEmbedder Embedder) TinyEncoder(TempFolder dir, IReadOnlyList<string> words)
    {
        string[] vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", .. words];
        var config = TinyModels.Bert();
        config.VocabSize = vocab.Length;
        using (var fresh = new BertModel(config, addPoolingLayer: false)) fresh.SavePretrained(dir.Path);
        File.WriteAllLines(dir.File("vocab.txt"), vocab);
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"do_lower_case": true}""");
        var encoder = PretrainedModels.LoadBert(dir.Path);
        return (encoder, new SentenceEmbedder(encoder, TextTokenizer.FromPretrained(dir.Path), new SentenceEmbedderOptions { MaxLength = 16 }));
    }
}
