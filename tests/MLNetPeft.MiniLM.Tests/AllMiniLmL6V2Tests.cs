using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using MLNetPeft.Checkpoints;
using MLNetPeft.MiniLM;
using Microsoft.Extensions.AI;
using MLNetPeft.Retrieval.Embeddings;
using static TorchSharp.torch;

namespace MLNetPeft.MiniLM.Tests;

public class AllMiniLmL6V2Tests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>Fifty-odd sentences of varied length, case, punctuation, numbers and rare words.</summary>
    private static readonly string[] Sentences =
    [
        "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.", "A man is riding a horse.",
        "A woman is playing violin.", "Two men pushed carts through the woods.", "A man is riding a white horse on an enclosed ground.",
        "A monkey is playing drums.", "Someone in a gorilla costume is playing a set of drums.", "The new movie is awesome!",
        "The cat sits outside", "The new movie is so great", "I love pasta", "Do you like pizza?", "The weather today is beautiful.",
        "It's raining cats and dogs in Seattle this afternoon.", "Quantum entanglement defies classical intuition.",
        "ML.NET lets .NET developers train models in C#.", "Prices rose 3.5% in Q3 2024, the highest since 1991.",
        "hello", "Hello, WORLD!!!", "Antidisestablishmentarianism is a long word.", "Ça va? Très bien, merci.",
        "The quick brown fox jumps over the lazy dog.", "She sells seashells by the seashore.", "To be, or not to be: that is the question.",
        "Email me at someone@example.com before 5pm.", "The stock market crashed on Monday.", "Photosynthesis converts light into chemical energy.",
        "My phone battery died again.", "Can you recommend a good book?", "The meeting was postponed until further notice.",
        "Paris is the capital of France.", "Water boils at 100 degrees Celsius at sea level.", "He scored twice in the second half.",
        "This restaurant serves the best sushi in town.", "I can't believe it's already December.", "Please turn off the lights when you leave.",
        "The algorithm runs in O(n log n) time.", "Neural networks learn representations from data.", "The child laughed at the clown.",
        "A storm is approaching the coast.", "We hiked up the mountain at dawn.", "Turn left at the second traffic light.",
        "The museum opens at nine.", "Birds migrate south for the winter.", "She painted the fence blue.", "The train was late by twenty minutes.",
        "Coffee or tea?", "An apple a day keeps the doctor away.", "The committee approved the budget unanimously.",
        "Deep learning models require lots of GPUs to train efficiently on large datasets like ImageNet and Common Crawl.",
        "x", "1 2 3 4 5 6 7 8 9 10",
    ];

    [Fact]
    public void TheOnnxWeightsMapOntoBertNamesWithTheDenseMatricesTransposed()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var graph = OnnxGraph.Read(AllMiniLmL6V2.OnnxModel(), "model.onnx");
        var weights = AllMiniLmL6V2.HfWeights(graph);
        string[] dense = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense"];
        foreach (int layer in Enumerable.Range(0, 6))
            foreach (var d in dense)
            {
                var w = weights[$"encoder.layer.{layer}.{d}.weight"];
                var b = weights[$"encoder.layer.{layer}.{d}.bias"];
                Assert.Equal(b.Shape[0], w.Shape[0]);   // [out, in]: rows match the bias
            }
        Assert.Equal([30522, 384], weights["embeddings.word_embeddings.weight"].Shape);
        output.WriteLine($"{graph.Nodes.Count} nodes, {graph.Initializers.Count} float initializers, inputs {string.Join(", ", graph.Inputs)}, outputs {string.Join(", ", graph.Outputs)}");
    }

    [Fact]
    public void SentenceEmbeddingsEqualOnnxRuntimeOnFiftySentences()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = AllMiniLmL6V2.Load();
        model.eval();
        var tokenizer = AllMiniLmL6V2.LoadTokenizer();
        Assert.True(Sentences.Length >= 50);
        using var session = new InferenceSession(AllMiniLmL6V2.OnnxModel());
        double worst = 0;
        foreach (var sentence in Sentences)
        {
            var ids = tokenizer.Encode(sentence).Select(i => (long)i).ToArray();
            // Ours: mean over the tokens of the last hidden state, then L2-normalised (sentence-transformers' pipeline).
            float[] ours;
            using (no_grad())
            {
                using var input = tensor(ids).unsqueeze(0);
                using var outputs = model.Forward(input, ones_like(input), zeros_like(input));
                using var pooled = outputs.LastHiddenState[0].mean([0]);
                ours = nn.functional.normalize(pooled, p: 2, dim: 0).data<float>().ToArray();
            }
            var reference = OnnxEmbedding(session, ids);
            double diff = ours.Zip(reference).Max(x => Math.Abs(x.First - x.Second));
            worst = Math.Max(worst, diff);
            Assert.True(diff < 1e-4, $"'{sentence}': largest difference {diff:E2}");
        }
        output.WriteLine($"{Sentences.Length} sentences, largest element difference {worst:E2}");
    }

    [Fact]
    public async Task TheSentenceEmbedderAndItsEmbeddingGeneratorGiveOnnxRuntimesVectorsInPaddedBatches()
    {
        // No test-wide dispose scope: the test awaits, and a scope belongs to one thread (the embedder scopes its own work).
        using var model = AllMiniLmL6V2.Load();
        var embedder = new SentenceEmbedder(model, AllMiniLmL6V2.LoadTokenizer(), new SentenceEmbedderOptions { BatchSize = 7 });
        using var session = new InferenceSession(AllMiniLmL6V2.OnnxModel());
        // Batches of 7 rows of different lengths: padding and the attention mask must not change a vector.
        var vectors = embedder.Embed(Sentences);
        using IEmbeddingGenerator<string, Embedding<float>> generator = new SentenceEmbeddingGenerator(embedder, "all-MiniLM-L6-v2");
        var generated = await generator.GenerateAsync(Sentences.Reverse());
        double worst = 0;
        for (int i = 0; i < Sentences.Length; i++)
        {
            var reference = OnnxEmbedding(session, embedder.Tokenize(Sentences[i]).Select(t => (long)t).ToArray());
            double diff = vectors[i].Zip(reference).Max(x => Math.Abs(x.First - x.Second));
            worst = Math.Max(worst, diff);
            Assert.True(diff < 1e-4, $"'{Sentences[i]}': largest difference {diff:E2}");
            // In reverse order the batches hold other rows (other padded lengths): equal up to float rounding.
            Assert.True(vectors[i].Zip(generated[Sentences.Length - 1 - i].Vector.ToArray()).Max(x => Math.Abs(x.First - x.Second)) < 1e-5);
            Assert.Equal(1.0, Math.Sqrt(vectors[i].Sum(v => (double)v * v)), 5);
        }
        Assert.Equal(384, embedder.Dimension);
        Assert.Equal(384, generator.GetService<EmbeddingGeneratorMetadata>()!.DefaultModelDimensions);
        Assert.True(generated.Usage!.InputTokenCount > Sentences.Length * 2);
        await Assert.ThrowsAsync<ArgumentException>(() => generator.GenerateAsync(["x"], new EmbeddingGenerationOptions { Dimensions = 128 }));
        output.WriteLine($"{Sentences.Length} sentences in batches of 7, largest element difference {worst:E2}");
    }

    [Fact]
    public void LongTextsAreCutToTheMaximumLengthWithSepKeptLast()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();
        using var model = AllMiniLmL6V2.Load();
        var tokenizer = AllMiniLmL6V2.LoadTokenizer();
        var embedder = new SentenceEmbedder(model, tokenizer, new SentenceEmbedderOptions { MaxLength = 16 });
        var ids = embedder.Tokenize(string.Join(" ", Enumerable.Repeat("word", 100)));
        Assert.Equal(16, ids.Count);
        Assert.Equal(tokenizer.TokenToId("[CLS]"), ids[0]);
        Assert.Equal(tokenizer.TokenToId("[SEP]"), ids[^1]);
        Assert.Equal("MaxLength", Assert.Throws<ArgumentOutOfRangeException>(() => new SentenceEmbedder(model, tokenizer, new SentenceEmbedderOptions { MaxLength = 1000 })).ParamName);
    }

    private static float[] OnnxEmbedding(InferenceSession session, long[] ids)
    {
        int n = ids.Length;
        var feeds = new List<NamedOnnxValue>();
        foreach (var name in session.InputMetadata.Keys)
        {
            long[] values = name.Contains("mask") ? Enumerable.Repeat(1L, n).ToArray() : name.Contains("type") ? new long[n] : ids;
            feeds.Add(NamedOnnxValue.CreateFromTensor(name, new DenseTensor<long>(values, [1, n])));
        }
        using var results = session.Run(feeds);
        var hidden = results.First().AsTensor<float>();
        float[] pooled;
        if (hidden.Rank == 3)
        {
            int d = hidden.Dimensions[2];
            pooled = new float[d];
            for (int t = 0; t < n; t++) for (int k = 0; k < d; k++) pooled[k] += hidden[0, t, k] / n;
        }
        else
        {
            pooled = Enumerable.Range(0, hidden.Dimensions[1]).Select(k => hidden[0, k]).ToArray();
        }
        double norm = Math.Sqrt(pooled.Sum(v => (double)v * v));
        return pooled.Select(v => (float)(v / norm)).ToArray();
    }
}

/// <summary>The converted checkpoint's cache: per user, and trusted only when its files are exactly what the conversion writes.</summary>
public class MiniLmCacheTests
{
    [Fact]
    public void ACachedCheckpointIsUsedOnlyWhileItsFilesAreTheOnesTheConversionWrites()
    {
        Assert.False(AllMiniLmL6V2.DefaultFolder.StartsWith(Path.GetFullPath(Path.GetTempPath()), StringComparison.Ordinal) &&
            !string.IsNullOrEmpty(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile)), "the cache is per user, not in the shared temp folder");
        var folder = Path.Combine(Path.GetTempPath(), "mlnetpeft-tests", Guid.NewGuid().ToString("N"), "minilm");
        try
        {
            AllMiniLmL6V2.EnsureCheckpoint(folder);
            Assert.True(AllMiniLmL6V2.IsIntact(folder));
            Assert.Equal(AllMiniLmL6V2.ExpectedSha256.Keys.Order(), Directory.GetFiles(folder).Select(Path.GetFileName).Order());
            // Planted or damaged files are not trusted: the folder is converted again.
            File.WriteAllText(Path.Combine(folder, "config.json"), """{"model_type": "bert", "vocab_size": 30522, "hidden_size": 8}""");
            Assert.False(AllMiniLmL6V2.IsIntact(folder));
            AllMiniLmL6V2.EnsureCheckpoint(folder);
            Assert.True(AllMiniLmL6V2.IsIntact(folder));
            File.WriteAllText(Path.Combine(folder, "tokenizer.json"), "{}");   // an extra file changes what a loader reads
            Assert.False(AllMiniLmL6V2.IsIntact(folder));
            AllMiniLmL6V2.EnsureCheckpoint(folder);
            Assert.True(AllMiniLmL6V2.IsIntact(folder));
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(folder)!, recursive: true);
        }
    }
}
