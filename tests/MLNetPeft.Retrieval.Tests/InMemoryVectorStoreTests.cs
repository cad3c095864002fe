using Microsoft.Extensions.AI;
using Microsoft.Extensions.VectorData;
using MLNetPeft.Retrieval.VectorStores;

namespace MLNetPeft.Retrieval.Tests;

public sealed class InMemoryVectorStoreTests : VectorStoreConformanceTests
{
    protected override VectorStore CreateStore(IEmbeddingGenerator? generator = null) => new InMemoryVectorStore(generator);

    private static async Task<InMemoryVectorCollection<string, Passage>> Filled()
    {
        var collection = new InMemoryVectorCollection<string, Passage>("passages");
        await collection.EnsureCollectionExistsAsync();
        await collection.UpsertAsync(Passages.Select(Copy));
        return collection;
    }

    [Fact]
    public async Task ABatchOfQueriesGivesWhatEachQueryGivesAlone()
    {
        using var collection = await Filled();
        ReadOnlyMemory<float>[] queries = [new float[] { 1, 0, 0, 0 }, new float[] { 0, 0, 1, 1 }, new float[] { -1, 0, 0, 0.5f }];
        var batch = await collection.SearchBatchAsync(queries, top: 3, new() { Filter = p => p.Year > 2020 });
        for (int q = 0; q < queries.Length; q++)
        {
            var single = await collection.SearchAsync(queries[q], top: 3, new() { Filter = p => p.Year > 2020 }).ToListAsync();
            Assert.Equal(single.Select(r => (r.Record.Id, r.Score)), batch[q].Select(r => (r.Record.Id, r.Score)));
        }
    }

    [Fact]
    public async Task SavedAndLoadedCollectionsSearchIdentically()
    {
        var path = Path.Combine(Path.GetTempPath(), $"mlnetpeft-collection-{Guid.NewGuid():N}.safetensors");
        try
        {
            using var collection = await Filled();
            await collection.DeleteAsync("b");
            collection.Save(path);
            Assert.Equal([path], Directory.GetFiles(Path.GetDirectoryName(path)!, Path.GetFileName(path) + "*"));   // no temporary left beside it
            using var loaded = new InMemoryVectorCollection<string, Passage>("passages");
            loaded.Load(path);
            Assert.Equal(4, loaded.Count);
            var query = new ReadOnlyMemory<float>([0.5f, 0.5f, 0.1f, 0]);
            var before = await collection.SearchAsync(query, top: 4).Select(r => (r.Record.Id, r.Record.Text, r.Record.Year, r.Score)).ToListAsync();
            var after = await loaded.SearchAsync(query, top: 4).Select(r => (r.Record.Id, r.Record.Text, r.Record.Year, r.Score)).ToListAsync();
            Assert.Equal(before, after);
            Assert.Equal(new float[] { 0, 0, 3, 4 }, (await loaded.GetAsync("d"))!.Vector!.Value.ToArray());
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task AFileOfAnotherLayoutIsRefusedAtLoad()
    {
        var path = Path.Combine(Path.GetTempPath(), $"mlnetpeft-collection-{Guid.NewGuid():N}.safetensors");
        try
        {
            using (var collection = await Filled()) collection.Save(path);
            using var other = new InMemoryVectorCollection<string, Wide>("wide");
            var e = Assert.Throws<InvalidDataException>(() => other.Load(path));
            Assert.Contains("Embedding", e.Message);
            File.WriteAllBytes(path, [1, 2, 3]);
            using var same = new InMemoryVectorCollection<string, Passage>("passages");
            Assert.ThrowsAny<InvalidDataException>(() => same.Load(path));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task UsingACollectionBeforeCreatingItNamesIt()
    {
        using var collection = new InMemoryVectorCollection<string, Passage>("not-yet");
        var e = await Assert.ThrowsAsync<VectorStoreException>(() => collection.UpsertAsync(Copy(Passages[0])));
        Assert.Contains("not-yet", e.Message);
    }

    [Fact]
    public async Task ManyUpsertsAndDeletesKeepSearchExact()
    {
        using var collection = new InMemoryVectorCollection<string, Passage>("grow");
        await collection.EnsureCollectionExistsAsync();
        var random = new Random(5);
        var all = Enumerable.Range(0, 300).Select(i => new Passage { Id = $"r{i}", Source = "s", Vector = Enumerable.Range(0, 4).Select(_ => (float)random.NextDouble() - 0.5f).ToArray() }).ToList();
        await collection.UpsertAsync(all);
        foreach (var p in all.Where((_, i) => i % 3 == 0)) await collection.DeleteAsync(p.Id);
        var kept = all.Where((_, i) => i % 3 != 0).ToList();
        Assert.Equal(kept.Count, collection.Count);
        float[] query = [0.3f, -0.2f, 0.5f, 0.1f];
        var best = kept.OrderByDescending(p => Dot(query, p.Vector!.Value.Span) / Math.Sqrt(Dot(p.Vector!.Value.Span, p.Vector!.Value.Span))).Take(10).Select(p => p.Id);
        Assert.Equal(best, await collection.SearchAsync(new ReadOnlyMemory<float>(query), top: 10).Select(r => r.Record.Id).ToListAsync());
    }

    private static double Dot(ReadOnlySpan<float> x, ReadOnlySpan<float> y)
    {
        double s = 0;
        for (int i = 0; i < x.Length; i++) s += x[i] * y[i];
        return s;
    }

    public sealed class Wide
    {
        [VectorStoreKey] public string Id { get; set; } = "";
        [VectorStoreVector(8)] public ReadOnlyMemory<float>? Embedding { get; set; }
    }
}
