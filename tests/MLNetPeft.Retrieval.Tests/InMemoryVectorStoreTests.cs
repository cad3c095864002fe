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

    public sealed class Article
    {
        [VectorStoreKey] public int Id { get; set; }
        [VectorStoreData(IsFullTextIndexed = true)] public string Body { get; set; } = "";
        [VectorStoreData] public string Topic { get; set; } = "";
        [VectorStoreVector(4)] public ReadOnlyMemory<float>? Vector { get; set; }
    }

    [Fact]
    public async Task HybridSearchIsReciprocalRankFusionOfTheVectorAndBm25RankingsThroughVectorDatasInterface()
    {
        var random = new Random(11);
        string[] words = ["lava", "violin", "yeast", "orbit", "tax", "river", "glacier", "piano"];
        var articles = Enumerable.Range(0, 300).Select(i => new Article
        {
            Id = i, Topic = i % 3 == 0 ? "science" : "other",
            Body = string.Join(' ', Enumerable.Range(0, 6).Select(_ => words[random.Next(words.Length)])),
            Vector = Enumerable.Range(0, 4).Select(_ => (float)random.NextDouble() - 0.5f).ToArray(),
        }).ToList();
        var path = Path.Combine(Path.GetTempPath(), $"mlnetpeft-hybrid-{Guid.NewGuid():N}.safetensors");
        using var collection = new InMemoryVectorCollection<int, Article>("articles");
        await collection.EnsureCollectionExistsAsync();
        await collection.UpsertAsync(articles);
        await collection.DeleteAsync(7);
        await collection.UpsertAsync(new Article { Id = 8, Topic = "science", Body = "glacier glacier glacier river", Vector = new float[] { 0.1f, 0.2f, 0.3f, 0.4f } });
        articles.RemoveAll(a => a.Id is 7 or 8);
        articles.Add(new Article { Id = 8, Topic = "science", Body = "glacier glacier glacier river", Vector = new float[] { 0.1f, 0.2f, 0.3f, 0.4f } });

        // What the fusion must be, from the two rankings computed here: exact cosine, and BM25 over the bodies with a filter applied after.
        var query = new float[] { 0.4f, -0.2f, 0.1f, 0.3f };
        string[] keywords = ["glacier", "river"];
        static double Cosine(float[] a, ReadOnlyMemory<float> b) { var v = b.Span; double d = 0, na = 0, nb = 0; for (int i = 0; i < 4; i++) { d += a[i] * v[i]; na += a[i] * a[i]; nb += v[i] * v[i]; } return d / Math.Sqrt(na * nb); }
        using var bm25 = Lexical.Bm25Index.InMemory();
        bm25.AddOrReplace(articles.Select(a => (a.Id.ToString(System.Globalization.CultureInfo.InvariantCulture), a.Body)));
        var science = articles.Where(a => a.Topic == "science").Select(a => a.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToHashSet();
        var dense = articles.Where(a => a.Topic == "science").OrderByDescending(a => Cosine(query, a.Vector!.Value)).Take(100)
            .Select(a => new Evaluation.RankedDocument(a.Id.ToString(System.Globalization.CultureInfo.InvariantCulture), Cosine(query, a.Vector!.Value))).ToList();
        var lexical = bm25.Search("glacier river", articles.Count).Where(r => science.Contains(r.DocumentId)).Take(100).ToList();
        var expected = Lexical.HybridFusion.ReciprocalRank([dense, lexical], 12).Skip(2).ToList();

        var hybrid = (IKeywordHybridSearchable<Article>)collection.GetService(typeof(IKeywordHybridSearchable<Article>))!;
        var options = new HybridSearchOptions<Article> { Filter = a => a.Topic == "science", Skip = 2 };
        var hits = await hybrid.HybridSearchAsync(new ReadOnlyMemory<float>(query), keywords, top: 10, options).ToListAsync();
        Assert.Equal(expected.Select(e => (e.DocumentId, Math.Round(e.Score, 9))), hits.Select(h => (h.Record.Id.ToString(System.Globalization.CultureInfo.InvariantCulture), Math.Round(h.Score!.Value, 9))));
        Assert.DoesNotContain(hits, h => h.Record.Id == 7);
        // The record rewritten to be about glaciers is the first of both rankings, so the first of the fused one.
        Assert.Equal(8, (await hybrid.HybridSearchAsync(new ReadOnlyMemory<float>([0.1f, 0.2f, 0.3f, 0.4f]), keywords, top: 1).FirstAsync()).Record.Id);

        try
        {
            collection.Save(path);
            using var loaded = new InMemoryVectorCollection<int, Article>("articles");
            loaded.Load(path);
            Assert.Equal(hits.Select(h => (h.Record.Id, h.Score)), await loaded.HybridSearchAsync(new ReadOnlyMemory<float>(query), keywords, top: 10, options).Select(h => (h.Record.Id, h.Score)).ToListAsync());
        }
        finally
        {
            File.Delete(path);
        }
        using var noText = await Filled();
        Assert.Throws<InvalidOperationException>(() => noText.HybridSearchAsync(new ReadOnlyMemory<float>([1, 0, 0, 0]), ["alpha"], top: 1).ToListAsync().AsTask().GetAwaiter().GetResult());
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
