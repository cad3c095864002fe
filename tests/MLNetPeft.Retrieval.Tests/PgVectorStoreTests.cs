using Microsoft.Extensions.AI;
using Microsoft.Extensions.VectorData;
using MLNetPeft.Retrieval.VectorStores.PgVector;

namespace MLNetPeft.Retrieval.Tests;

/// <summary>The store conformance suite, and what is PostgreSQL's own, against a throwaway server with pgvector.</summary>
public sealed class PgVectorStoreTests(PostgresServer server) : VectorStoreConformanceTests, IClassFixture<PostgresServer>, IDisposable
{
    private readonly List<IDisposable> _created = [];

    protected override VectorStore CreateStore(IEmbeddingGenerator? generator = null)
    {
        Skip.If(server.Unavailable is not null, server.Unavailable);
        var store = PgVectorStore.CreateAsync(server.NewDatabase(), generator).GetAwaiter().GetResult();
        _created.Add(store);
        return store;
    }

    public void Dispose()
    {
        foreach (var d in _created) d.Dispose();
    }

    [SkippableFact]
    public async Task TheTableIsMigratedAndADimensionMismatchIsNamed()
    {
        using var store = CreateStore();
        var first = store.GetCollection<string, Passage>("kb");
        await first.EnsureCollectionExistsAsync();
        await first.UpsertAsync(Copy(Passages[0]));
        // A newer record type with one more data property: the column is added, the rows stay.
        var newer = store.GetCollection<string, PassageWithLanguage>("kb");
        await newer.EnsureCollectionExistsAsync();
        var row = await newer.GetAsync("a");
        Assert.Equal("alpha", row!.Text);
        Assert.Null(row.Language);
        await newer.UpsertAsync(new PassageWithLanguage { Id = "z", Text = "zeta", Language = "en", Vector = new float[] { 0, 0, 0, 1 } });
        Assert.Equal("en", (await newer.GetAsync("z"))!.Language);
        // An embedder of another size on the same collection.
        var e = await Assert.ThrowsAsync<VectorStoreException>(() => store.GetCollection<string, WiderPassage>("kb").EnsureCollectionExistsAsync());
        Assert.Contains("vector(4)", e.Message);
        Assert.Contains("8 dimensions", e.Message);
    }

    [SkippableFact]
    public async Task AnUnreachableServerIsNamedWithoutThePassword()
    {
        Skip.If(server.Unavailable is not null, server.Unavailable);
        var e = await Assert.ThrowsAsync<VectorStoreException>(() => PgVectorStore.CreateAsync("Host=127.0.0.1;Port=1;Username=app;Password=s3cret-pw;Database=kb;Timeout=3"));
        Assert.Contains("127.0.0.1:1", e.Message);
        Assert.Contains("'kb'", e.Message);
        Assert.DoesNotContain("s3cret-pw", e.Message);
    }

    [SkippableFact]
    public async Task SelectiveFiltersStillFillTopThroughTheHnswIndex()
    {
        using var store = CreateStore();
        var collection = store.GetCollection<string, Passage>("many");
        await collection.EnsureCollectionExistsAsync();
        var random = new Random(3);
        var records = Enumerable.Range(0, 2000).Select(i => new Passage
        {
            Id = $"r{i}", Source = i % 100 == 0 ? "rare" : "common", Text = $"t{i}", Year = i,
            Vector = Enumerable.Range(0, 4).Select(_ => (float)random.NextDouble() - 0.5f).ToArray(),
        }).ToList();
        await collection.UpsertAsync(records);
        var hits = await collection.SearchAsync(new ReadOnlyMemory<float>([0.1f, 0.2f, 0.3f, 0.4f]), top: 10, new() { Filter = p => p.Source == "rare" }).ToListAsync();
        Assert.Equal(10, hits.Count);
        Assert.All(hits, h => Assert.Equal("rare", h.Record.Source));
        var years = new[] { 100, 200 };
        Assert.Equal(["r100", "r200"], await collection.GetAsync(p => years.Contains(p.Year), top: 5).Select(p => p.Id).OrderBy(i => i).ToListAsync());
    }

    [SkippableFact]
    public async Task BulkLoadingByCopyGivesTheRecordsAndRankingOfUpsertsAndKeepsTheIndex()
    {
        using var store = CreateStore();
        var random = new Random(5);
        var records = Enumerable.Range(0, 600).Select(i => new Passage
        {
            Id = $"r{i}", Source = i % 2 == 0 ? "even" : "odd", Text = i % 7 == 0 ? "" : $"t{i}", Year = i,
            Vector = Enumerable.Range(0, 4).Select(_ => (float)random.NextDouble() - 0.5f).ToArray(),
        }).ToList();
        var upserted = store.GetCollection<string, Passage>("upserted");
        await upserted.EnsureCollectionExistsAsync();
        await upserted.UpsertAsync(records);
        var bulk = (PgVectorCollection<string, Passage>)store.GetCollection<string, Passage>("bulk");
        Assert.Equal(600, await bulk.BulkLoadAsync(records));

        var query = new ReadOnlyMemory<float>([0.3f, -0.1f, 0.2f, 0.4f]);
        Assert.Equal(await upserted.SearchAsync(query, top: 20).Select(h => h.Record.Id).ToListAsync(), await bulk.SearchAsync(query, top: 20).Select(h => h.Record.Id).ToListAsync());
        var row = (await bulk.GetAsync("r14", new RecordRetrievalOptions { IncludeVectors = true }))!;
        Assert.Equal(("even", "", 14), (row.Source, row.Text, row.Year));
        Assert.Equal(records[14].Vector!.Value.ToArray(), row.Vector!.Value.ToArray());
        Assert.Equal(10, await bulk.SearchAsync(query, top: 10, new() { Filter = p => p.Source == "odd" }).CountAsync());

        // The HNSW index is there after the load, and a second bulk load is refused with the collection named.
        var dataSource = (Npgsql.NpgsqlDataSource)store.GetService(typeof(Npgsql.NpgsqlDataSource))!;
        await using (var command = dataSource.CreateCommand("SELECT count(*) FROM pg_indexes WHERE tablename = 'bulk' AND indexdef LIKE '%USING hnsw%'"))
            Assert.Equal(1L, (long)(await command.ExecuteScalarAsync())!);
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => bulk.BulkLoadAsync(records.Take(1)));
        Assert.Contains("'bulk'", e.Message);
        Assert.Equal(600, await bulk.GetAsync(_ => true, top: 1000).CountAsync());
    }

    public sealed class PassageWithLanguage
    {
        [VectorStoreKey] public string Id { get; set; } = "";
        [VectorStoreData] public string Source { get; set; } = "";
        [VectorStoreData] public string Text { get; set; } = "";
        [VectorStoreData] public int Year { get; set; }
        [VectorStoreData] public string? Language { get; set; }
        [VectorStoreVector(4)] public ReadOnlyMemory<float>? Vector { get; set; }
    }

    public sealed class WiderPassage
    {
        [VectorStoreKey] public string Id { get; set; } = "";
        [VectorStoreVector(8)] public ReadOnlyMemory<float>? Vector { get; set; }
    }
}
