using Microsoft.Extensions.AI;
using Microsoft.Extensions.VectorData;

namespace MLNetPeft.Retrieval.Tests;

/// <summary>A passage of a knowledge base as Semantic Kernel users declare records: attributes on a plain class.</summary>
public sealed class Passage
{
    [VectorStoreKey] public string Id { get; set; } = "";
    [VectorStoreData(IsIndexed = true)] public string Source { get; set; } = "";
    [VectorStoreData] public string Text { get; set; } = "";
    [VectorStoreData(IsIndexed = true)] public int Year { get; set; }
    [VectorStoreVector(4, DistanceFunction = DistanceFunction.CosineSimilarity)] public ReadOnlyMemory<float>? Vector { get; set; }
}

/// <summary>
/// The behaviour every store of the library must share, run against each store by a subclass (the store conformance
/// suite): what VectorData's contract says, and ranking checked against cosine similarities computed here.
/// </summary>
public abstract class VectorStoreConformanceTests
{
    /// <summary>A new, empty store for one test; the subclass disposes what it creates.</summary>
    protected abstract VectorStore CreateStore(IEmbeddingGenerator? generator = null);

    protected static readonly Passage[] Passages =
    [
        new() { Id = "a", Source = "wiki", Text = "alpha", Year = 2020, Vector = new float[] { 1, 0, 0, 0 } },
        new() { Id = "b", Source = "wiki", Text = "beta", Year = 2021, Vector = new float[] { 0.8f, 0.6f, 0, 0 } },
        new() { Id = "c", Source = "news", Text = "gamma", Year = 2022, Vector = new float[] { 0, 1, 0, 0 } },
        new() { Id = "d", Source = "news", Text = "delta", Year = 2023, Vector = new float[] { 0, 0, 3, 4 } },
        new() { Id = "e", Source = "blog", Text = "epsilon", Year = 2024, Vector = new float[] { -1, -1, 0, 0 } },
    ];

    private static double Cosine(ReadOnlySpan<float> x, ReadOnlySpan<float> y)
    {
        double dot = 0, nx = 0, ny = 0;
        for (int i = 0; i < x.Length; i++) { dot += x[i] * y[i]; nx += x[i] * x[i]; ny += y[i] * y[i]; }
        return dot / Math.Sqrt(nx * ny);
    }

    private async Task<VectorStoreCollection<string, Passage>> Filled(VectorStore store, string name = "passages")
    {
        var collection = store.GetCollection<string, Passage>(name);
        await collection.EnsureCollectionExistsAsync();
        await collection.UpsertAsync(Passages.Select(Copy));
        return collection;
    }

    protected static Passage Copy(Passage p) => new() { Id = p.Id, Source = p.Source, Text = p.Text, Year = p.Year, Vector = p.Vector?.ToArray() };

    [SkippableFact]
    public async Task SearchRanksByCosineSimilarityAsComputedByHand()
    {
        using var store = CreateStore();
        var collection = await Filled(store);
        float[] query = [0.95f, 0.2f, 0.1f, 0.2f];
        var results = await collection.SearchAsync(new ReadOnlyMemory<float>(query), top: 5).ToListAsync();
        var expected = Passages.Select(p => (p.Id, Score: Cosine(query, p.Vector!.Value.Span))).OrderByDescending(x => x.Score).ToList();
        Assert.Equal(expected.Select(x => x.Id), results.Select(r => r.Record.Id));
        foreach (var (r, e) in results.Zip(expected)) Assert.Equal(e.Score, r.Score!.Value, 5);
        Assert.Equal("alpha", results[0].Record.Text);
    }

    [SkippableFact]
    public async Task TopSkipFilterAndThresholdNarrowTheResults()
    {
        using var store = CreateStore();
        var collection = await Filled(store);
        var query = new ReadOnlyMemory<float>([1, 0.1f, 0, 0]);
        Assert.Equal(["a", "b"], await collection.SearchAsync(query, top: 2).Select(r => r.Record.Id).ToListAsync());
        Assert.Equal(["b", "c"], await collection.SearchAsync(query, top: 2, new() { Skip = 1 }).Select(r => r.Record.Id).ToListAsync());
        Assert.Equal(["c", "d"], await collection.SearchAsync(query, top: 5, new() { Filter = p => p.Source == "news" }).Select(r => r.Record.Id).ToListAsync());
        Assert.Equal(["b", "c"], await collection.SearchAsync(query, top: 5, new() { Filter = p => p.Year >= 2021 && p.Year < 2023 }).Select(r => r.Record.Id).ToListAsync());
        Assert.Equal(["a", "b", "d"], await collection.SearchAsync(query, top: 5, new() { Filter = p => p.Source == "wiki" || p.Year == 2023 }).Select(r => r.Record.Id).ToListAsync());
        // Cosine of the query with b is 0.85: a threshold of 0.8 keeps a and b.
        Assert.Equal(["a", "b"], await collection.SearchAsync(query, top: 5, new() { ScoreThreshold = 0.8 }).Select(r => r.Record.Id).ToListAsync());
        Assert.Empty(await collection.SearchAsync(query, top: 5, new() { Filter = p => p.Source == "none" }).ToListAsync());
    }

    [SkippableFact]
    public async Task UpsertReplacesGetAndDeleteWorkByKey()
    {
        using var store = CreateStore();
        var collection = await Filled(store);
        Assert.Equal("gamma", (await collection.GetAsync("c"))!.Text);
        Assert.Null(await collection.GetAsync("zzz"));
        var changed = Copy(Passages[2]);
        changed.Text = "gamma 2";
        changed.Vector = new float[] { 1, 0, 0, 0 };
        await collection.UpsertAsync(changed);
        Assert.Equal("gamma 2", (await collection.GetAsync("c"))!.Text);
        await collection.DeleteAsync("a");
        await collection.DeleteAsync("not there");
        Assert.Null(await collection.GetAsync("a"));
        var results = await collection.SearchAsync(new ReadOnlyMemory<float>([1, 0, 0, 0]), top: 10).ToListAsync();
        Assert.Equal(4, results.Count);
        Assert.Equal("c", results[0].Record.Id);
        Assert.Equal(1.0, results[0].Score!.Value, 5);
        Assert.Equal(["b", "c"], await collection.GetAsync(p => p.Source == "wiki" || p.Id == "c", top: 10).Select(p => p.Id).OrderBy(i => i).ToListAsync());
    }

    [SkippableFact]
    public async Task CollectionsAreListedCreatedAndDeleted()
    {
        using var store = CreateStore();
        await Filled(store, "one");
        await Filled(store, "two");
        Assert.Equal(["one", "two"], (await store.ListCollectionNamesAsync().ToListAsync()).Order());
        Assert.True(await store.CollectionExistsAsync("one"));
        await store.EnsureCollectionDeletedAsync("one");
        Assert.False(await store.CollectionExistsAsync("one"));
        Assert.Equal(["two"], await store.ListCollectionNamesAsync().ToListAsync());
        var gone = store.GetCollection<string, Passage>("one");
        await gone.EnsureCollectionExistsAsync();
        Assert.Null(await gone.GetAsync("a"));   // created again, empty
    }

    [SkippableFact]
    public async Task AVectorOfTheWrongLengthIsRefusedWithThePropertyNamed()
    {
        using var store = CreateStore();
        var collection = await Filled(store);
        var bad = Copy(Passages[0]);
        bad.Vector = new float[] { 1, 2, 3 };
        var e = await Assert.ThrowsAnyAsync<Exception>(() => collection.UpsertAsync(bad));
        Assert.Contains("Vector", e.Message);
        Assert.Contains("4", e.Message);
        var q = await Assert.ThrowsAnyAsync<Exception>(async () => await collection.SearchAsync(new ReadOnlyMemory<float>([1, 2]), top: 1).ToListAsync());
        Assert.Contains("4", q.Message);
    }

    [SkippableFact]
    public async Task TextIsEmbeddedByTheConfiguredGeneratorOnSearch()
    {
        using var generator = new LetterCountGenerator();
        using var store = CreateStore(generator);
        var collection = store.GetCollection<string, Passage>("texts");
        await collection.EnsureCollectionExistsAsync();
        var records = new[] { "aaa", "bbb", "ccd" }.Select((t, i) => new Passage { Id = $"p{i}", Text = t, Source = "x", Vector = LetterCountGenerator.Vector(t) });
        await collection.UpsertAsync(records);
        var results = await collection.SearchAsync("cc", top: 1).ToListAsync();
        Assert.Equal("ccd", results[0].Record.Text);
    }

    /// <summary>A deterministic embedder for the contract tests: counts of the letters a–d.</summary>
    protected sealed class LetterCountGenerator : IEmbeddingGenerator<string, Embedding<float>>
    {
        public static float[] Vector(string text) => [.. "abcd".Select(c => (float)text.Count(x => x == c) + 0.01f)];

        public Task<GeneratedEmbeddings<Embedding<float>>> GenerateAsync(IEnumerable<string> values, EmbeddingGenerationOptions? options = null, CancellationToken cancellationToken = default) =>
            Task.FromResult(new GeneratedEmbeddings<Embedding<float>>(values.Select(v => new Embedding<float>(Vector(v)))));

        public object? GetService(Type serviceType, object? serviceKey = null) => null;

        public void Dispose() { }
    }
}
