using System.Diagnostics;
using Microsoft.Extensions.VectorData;
using MLNetPeft.Retrieval.Tests;
using MLNetPeft.Retrieval.VectorStores;
using MLNetPeft.Retrieval.VectorStores.PgVector;
using Npgsql;

/// <summary>
/// How the stores' costs grow with the collection: random unit vectors (384 dimensions, seeded) at each size; build time,
/// memory, query latency p50/p99 of 100 queries one at a time, and recall@10 against exact search, for the in-memory
/// store and pgvector's HNSW index (m 16, ef_construction 64, ef_search 40 and 100), loaded by
/// <see cref="PgVectorCollection{TKey, TRecord}.BulkLoadAsync"/> (binary COPY, then the index built once).
/// </summary>
internal static class ScalingBenchmark
{
    private const int Dimensions = 384, Queries = 100, Top = 10;

    public static async Task Run(IReadOnlyList<int> sizes)
    {
        Console.WriteLine("| vectors | store | build s | memory MB | p50 ms | p99 ms | recall@10 vs exact |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        using var server = new PostgresServer();
        foreach (var n in sizes)
        {
            var random = new Random(n);
            float[] Unit()
            {
                var v = new float[Dimensions];
                double norm = 0;
                for (int i = 0; i < Dimensions; i++) { v[i] = (float)NormalSample(random); norm += v[i] * v[i]; }
                for (int i = 0; i < Dimensions; i++) v[i] /= (float)Math.Sqrt(norm);
                return v;
            }
            var records = Enumerable.Range(0, n).Select(i => new Item { Id = i, Vector = Unit() }).ToList();
            var queries = Enumerable.Range(0, Queries).Select(_ => (ReadOnlyMemory<float>)Unit()).ToList();

            long before = GC.GetTotalMemory(forceFullCollection: true);
            var clock = Stopwatch.StartNew();
            using var memory = new InMemoryVectorCollection<int, Item>("items");
            await memory.EnsureCollectionExistsAsync();
            foreach (var chunk in records.Chunk(10_000)) await memory.UpsertAsync(chunk);
            double build = clock.Elapsed.TotalSeconds;
            // The matrix lives in native memory (libtorch): n × d floats, plus the managed records.
            double megabytes = ((double)n * Dimensions * 4 + Math.Max(0, GC.GetTotalMemory(true) - before)) / 1e6;
            var exact = new List<HashSet<int>>();
            var times = new List<double>();
            foreach (var q in queries)
            {
                var sw = Stopwatch.StartNew();
                var ids = await memory.SearchAsync(q, Top).Select(r => r.Record.Id).ToListAsync();
                times.Add(sw.Elapsed.TotalMilliseconds);
                exact.Add([.. ids]);
            }
            Console.WriteLine($"| {n:N0} | in memory (exact) | {build:F1} | {megabytes:F0} | {Percentile(times, 50):F2} | {Percentile(times, 99):F2} | 1.000 |");

            if (server.Unavailable is { } why) { Console.WriteLine($"| {n:N0} | pgvector | skipped: {why} | | | | |"); continue; }
            var connection = server.NewDatabase();
            // Enough maintenance_work_mem for the graph to be built in memory at every size here.
            using var store = await PgVectorStore.CreateAsync(connection, options: new PgVectorStoreOptions { IndexBuildMemoryMegabytes = 4096 });
            var collection = (PgVectorCollection<int, Item>)store.GetCollection<int, Item>("items");
            clock.Restart();
            await collection.BulkLoadAsync(records);
            build = clock.Elapsed.TotalSeconds;
            double size;
            await using (var dataSource = NpgsqlDataSource.Create(connection))
            await using (var command = dataSource.CreateCommand("SELECT pg_total_relation_size('public.items')"))
                size = (long)(await command.ExecuteScalarAsync())! / 1e6;
            foreach (var ef in new[] { 40, 100 })
            {
                using var searching = await PgVectorStore.CreateAsync(connection, options: new PgVectorStoreOptions { EfSearch = ef });
                var items = searching.GetCollection<int, Item>("items");
                times.Clear();
                double recall = 0;
                for (int i = 0; i < Queries; i++)
                {
                    var sw = Stopwatch.StartNew();
                    var ids = await items.SearchAsync(queries[i], Top).Select(r => r.Record.Id).ToListAsync();
                    times.Add(sw.Elapsed.TotalMilliseconds);
                    recall += ids.Count(exact[i].Contains) / (double)Top;
                }
                Console.WriteLine($"| {n:N0} | pgvector HNSW, ef_search {ef} | {(ef == 40 ? $"{build:F1}" : "″")} | {size:F0} (table + index) | {Percentile(times, 50):F2} | {Percentile(times, 99):F2} | {recall / Queries:F3} |");
            }
        }
    }

    private static double NormalSample(Random random) => Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());

    private static double Percentile(List<double> values, int p)
    {
        var sorted = values.Order().ToList();
        return sorted[Math.Min(sorted.Count - 1, (int)Math.Ceiling(p / 100.0 * sorted.Count) - 1)];
    }

    private sealed class Item
    {
        [VectorStoreKey] public int Id { get; set; }
        [VectorStoreVector(384)] public ReadOnlyMemory<float>? Vector { get; set; }
    }
}
