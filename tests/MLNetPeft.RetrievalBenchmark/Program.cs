using System.Diagnostics;
using System.Security.Cryptography;
using Microsoft.Extensions.VectorData;
using MLNetPeft.MiniLM;
using MLNetPeft.Retrieval.Embeddings;
using MLNetPeft.Retrieval.Evaluation;
using MLNetPeft.Retrieval.Lexical;
using MLNetPeft.Retrieval.Tests;
using MLNetPeft.Retrieval.VectorStores;
using MLNetPeft.Retrieval.VectorStores.PgVector;
using MLNetPeft.Training;
using MLNetPeft.Training.Embedding;
using MLNetPeft.Tuners.Lora;

// SciFact (BEIR) retrieval benchmark:
//   dotnet run -c Release --project tests/MLNetPeft.RetrievalBenchmark -- ../shared/data/scifact [--no-pgvector] [--tune [--tune-grid lr:epochs,…]]
// Comparisons use the test split only (300 queries); the weight of weighted fusion is chosen on the 809 training queries.
// --tune: all-MiniLM-L6-v2 with LoRA, trained on the training queries' judged pairs with in-batch negatives
// (MultipleNegativesRankingLoss), its settings fixed in advance (not searched on test).
// Document embeddings are cached on disk, keyed by encoder, settings and corpus hash.
//   dotnet run -c Release --project tests/MLNetPeft.RetrievalBenchmark -- --scaling 10000,100000,1000000   (ScalingBenchmark.cs)
if (args is ["--scaling", var sizes])
{
    await ScalingBenchmark.Run(sizes.Split(',').Select(int.Parse).ToList());
    return 0;
}
if (args.Length == 0 || args[0].StartsWith("--", StringComparison.Ordinal))
{
    Console.Error.WriteLine("usage: MLNetPeft.RetrievalBenchmark <scifact folder> [--no-pgvector]");
    return 2;
}
var folder = args[0];
var data = BeirDataset.Load(folder);
var test = BeirDataset.LoadJudgements(folder, "test");
var train = BeirDataset.LoadJudgements(folder, "train");
Console.WriteLine($"SciFact: {data.Corpus.Count} documents, {test.Count} test queries ({test.Values.Sum(q => q.Count)} judgements), {train.Count} training queries; threads {TorchSharp.torch.get_num_threads()}");
const int Depth = 100;   // documents ranked per query
var rows = new List<string>();
string Row(string name, RetrievalReport r, string note = "") => $"| {name} | {r[10].Ndcg:F3} | {r[100].Recall:F3} | {r[10].Mrr:F3} | {note} |";

// BM25 (Lucene, k1 1.2, b 0.75, English analysis) over "title text".
var clock = Stopwatch.StartNew();
using var bm25 = Bm25Index.InMemory();
bm25.AddOrReplace(data.Corpus.Select(d => (d.Id, d.FullText)));
var bm25Build = clock.Elapsed;
Dictionary<string, IReadOnlyList<RankedDocument>> Lexical(IEnumerable<string> ids) => ids.ToDictionary(q => q, q => bm25.Search(data.Queries[q], Depth));
var bm25Test = Lexical(test.Keys);
var bm25Train = Lexical(train.Keys);
rows.Add(Row("BM25 (Lucene, k1 1.2, b 0.75)", RetrievalMetrics.Evaluate(test, bm25Test, 10, 100), $"index {bm25Build.TotalSeconds:F1} s"));

// Dense: all-MiniLM-L6-v2, exact cosine search in the in-memory store.
using var encoder = AllMiniLmL6V2.Load();
var embedder = new SentenceEmbedder(encoder, AllMiniLmL6V2.LoadTokenizer());
using var documents = new InMemoryVectorCollection<string, DocumentVector>("scifact");
var (embedSeconds, cached) = EmbedCorpus(data, embedder, documents, folder, "all-MiniLM-L6-v2");
var queryIds = test.Keys.Concat(train.Keys).Distinct().ToList();
clock.Restart();
var queryVectors = embedder.Embed(queryIds.Select(q => data.Queries[q]).ToList());
double queriesPerSecond = queryIds.Count / clock.Elapsed.TotalSeconds;
var vectorOf = queryIds.Select((q, i) => (q, i)).ToDictionary(x => x.q, x => queryVectors[x.i]);
// Each query's ranking of the collection's documents (one batched exact search).
static async Task<Dictionary<string, IReadOnlyList<RankedDocument>>> Search(InMemoryVectorCollection<string, DocumentVector> collection,
    Dictionary<string, float[]> vectors, ICollection<string> ids)
{
    var results = await collection.SearchBatchAsync(ids.Select(q => (ReadOnlyMemory<float>)vectors[q]).ToList(), Depth);
    return ids.Zip(results).ToDictionary(x => x.First, x => (IReadOnlyList<RankedDocument>)x.Second.Select(r => new RankedDocument(r.Record.Id, r.Score!.Value)).ToList());
}
var denseTest = await Search(documents, vectorOf, test.Keys.ToList());
var denseTrain = await Search(documents, vectorOf, train.Keys.ToList());
rows.Add(Row("dense all-MiniLM-L6-v2 (exact cosine)", RetrievalMetrics.Evaluate(test, denseTest, 10, 100),
    cached ? "document vectors from the cache" : $"corpus embedded in {embedSeconds:F0} s ({data.Corpus.Count / embedSeconds:F1} docs/s)"));

// Hybrid: reciprocal rank fusion (k 60), and weighted min-max fusion with the weight chosen on the training queries.
Dictionary<string, IReadOnlyList<RankedDocument>> Rrf(Dictionary<string, IReadOnlyList<RankedDocument>> a, Dictionary<string, IReadOnlyList<RankedDocument>> b) =>
    a.Keys.ToDictionary(q => q, q => HybridFusion.ReciprocalRank([a[q], b[q]], Depth));
Dictionary<string, IReadOnlyList<RankedDocument>> Weighted(Dictionary<string, IReadOnlyList<RankedDocument>> lexical, Dictionary<string, IReadOnlyList<RankedDocument>> dense, double w) =>
    lexical.Keys.ToDictionary(q => q, q => HybridFusion.WeightedScores([(lexical[q], w), (dense[q], 1 - w)], Depth));
rows.Add(Row("hybrid, reciprocal rank fusion (k 60)", RetrievalMetrics.Evaluate(test, Rrf(bm25Test, denseTest), 10, 100)));
var weights = Enumerable.Range(1, 9).Select(i => i / 10.0).ToList();
var bestWeight = weights.MaxBy(w => RetrievalMetrics.Evaluate(train, Weighted(bm25Train, denseTrain, w), 10)[10].Ndcg);
rows.Add(Row($"hybrid, weighted scores (BM25 weight {bestWeight:F1}, chosen on train)", RetrievalMetrics.Evaluate(test, Weighted(bm25Test, denseTest, bestWeight), 10, 100)));

if (args.Contains("--tune"))
{
    // LoRA r 16 on every linear layer of the encoder, batches of 32. --tune-grid "lr:epochs[:hn],…" tries several settings,
    // each trained on the training queries less 100 validation queries (a fixed seed) and chosen by their nDCG@10;
    // ":hn" adds to each pair a hard negative, the query's best BM25 document that is not judged relevant (as DPR mines them).
    int gridAt = Array.IndexOf(args, "--tune-grid");
    var grid = gridAt >= 0 && gridAt + 1 < args.Length
        ? args[gridAt + 1].Split(',').Select(item => item.Split(':')).Select(x => (Lr: double.Parse(x[0], System.Globalization.CultureInfo.InvariantCulture),
            Epochs: int.Parse(x[1], System.Globalization.CultureInfo.InvariantCulture), HardNegatives: x.Length > 2 && x[2] == "hn")).ToList()
        : [(Lr: 2e-4, Epochs: 3, HardNegatives: false)];
    var validationIds = grid.Count > 1 ? new Random(809).GetItems(train.Keys.Order(StringComparer.Ordinal).ToArray(), train.Count).Distinct().Take(100).ToHashSet() : [];
    var validation = train.Where(q => validationIds.Contains(q.Key)).ToDictionary(q => q.Key, q => q.Value);
    var pairs = train.Where(q => !validationIds.Contains(q.Key)).SelectMany(q => q.Value.Where(d => d.Value > 0).Select(d => (Query: q.Key, Doc: d.Key))).ToList();
    var textOf = data.Corpus.ToDictionary(d => d.Id, d => d.FullText);
    var lora = new LoraConfig { R = 16, LoraAlpha = 32, TargetModules = ["query", "key", "value", "dense"] };
    const int batch = 32;
    if (grid.Count > 1) Console.WriteLine($"Tuning grid: {pairs.Count} pairs of {train.Count - validation.Count} training queries; {validation.Count} validation queries choose the setting.");
    (double Validation, string Name, Dictionary<string, IReadOnlyList<RankedDocument>> Test, Dictionary<string, IReadOnlyList<RankedDocument>> Train)? chosen = null;
    string? HardNegative(string query) => bm25Train[query].Select(d => d.DocumentId).FirstOrDefault(d => !(train[query].TryGetValue(d, out int grade) && grade > 0));
    foreach (var (lr, epochs, hardNegatives) in grid)
    {
        using var tunedEncoder = AllMiniLmL6V2.Load();
        var tuned = new SentenceEmbedder(tunedEncoder, AllMiniLmL6V2.LoadTokenizer());
        using var adapter = LoraModel.Apply(tunedEncoder, lora, seed: 1);
        var trainingOptions = new TrainingOptions { MaxSteps = epochs * (pairs.Count + batch - 1) / batch, BatchSize = batch, LearningRate = lr, WarmupSteps = 10, WeightDecay = 0.01, Seed = 1 };
        clock.Restart();
        var result = new ContrastiveEmbeddingTrainer(tuned, trainingOptions).Train(pairs
            .Select(p => (p, Negative: hardNegatives ? HardNegative(p.Query) : null))
            .Where(x => !hardNegatives || x.Negative is not null)
            .Select(x => new EmbeddingPair(tuned.Tokenize(data.Queries[x.p.Query]), tuned.Tokenize(textOf[x.p.Doc]), x.Negative is null ? null : tuned.Tokenize(textOf[x.Negative]))).ToList());
        var tuneTime = clock.Elapsed;
        Console.WriteLine($"LoRA tuning, lr {lr}, {epochs} epochs{(hardNegatives ? ", BM25 hard negatives" : "")}: {pairs.Count} pairs, {trainingOptions.MaxSteps} steps, loss {result.LossHistory.Take(5).Average():F3} → {result.LossHistory.TakeLast(5).Average():F3}, {tuneTime:mm\\:ss}");
        using var tunedDocuments = new InMemoryVectorCollection<string, DocumentVector>("scifact-tuned");
        var (tunedEmbedSeconds, tunedCached) = EmbedCorpus(data, tuned, tunedDocuments, folder,
            $"all-MiniLM-L6-v2+lora-r{lora.R}-a{lora.LoraAlpha}-{string.Join('.', lora.TargetModules)}-{trainingOptions.MaxSteps}x{batch}-lr{trainingOptions.LearningRate}-seed{trainingOptions.Seed}" +
            (hardNegatives ? "-bm25negatives" : "") +
            (validation.Count > 0 ? $"-without{validation.Count}" : ""));
        var tunedQueries = tuned.Embed(queryIds.Select(q => data.Queries[q]).ToList());
        var tunedVectorOf = queryIds.Select((q, i) => (q, i)).ToDictionary(x => x.q, x => tunedQueries[x.i]);
        var tunedTest = await Search(tunedDocuments, tunedVectorOf, test.Keys.ToList());
        var tunedTrain = await Search(tunedDocuments, tunedVectorOf, train.Keys.ToList());
        double validationNdcg = validation.Count > 0 ? RetrievalMetrics.Evaluate(validation, tunedTrain.Where(x => validation.ContainsKey(x.Key)).ToDictionary(), 10)[10].Ndcg : double.NaN;
        string name = $"dense, all-MiniLM-L6-v2 + LoRA r {lora.R} (MNRL on train{(hardNegatives ? " with BM25 hard negatives" : "")}, {trainingOptions.MaxSteps} steps, lr {lr}" + (validation.Count > 0 ? $"; validation nDCG@10 {validationNdcg:F3}" : "") + ")";
        rows.Add(Row(name, RetrievalMetrics.Evaluate(test, tunedTest, 10, 100), $"tuning {tuneTime:mm\\:ss}" + (tunedCached ? "" : $", corpus {tunedEmbedSeconds:F0} s")));
        if (chosen is null || validationNdcg > chosen.Value.Validation) chosen = (validationNdcg, name, tunedTest, tunedTrain);
    }
    var (_, chosenName, chosenTest, chosenTrain) = chosen!.Value;
    if (grid.Count > 1) Console.WriteLine($"Chosen on validation: {chosenName}");
    rows.Add(Row("hybrid RRF, tuned dense + BM25", RetrievalMetrics.Evaluate(test, Rrf(bm25Test, chosenTest), 10, 100)));
    var tunedWeight = weights.MaxBy(w => RetrievalMetrics.Evaluate(train, Weighted(bm25Train, chosenTrain, w), 10)[10].Ndcg);
    rows.Add(Row($"hybrid weighted, tuned dense + BM25 (BM25 weight {tunedWeight:F1}, chosen on train)", RetrievalMetrics.Evaluate(test, Weighted(bm25Test, chosenTest, tunedWeight), 10, 100)));
}

Console.WriteLine();
Console.WriteLine("| SciFact test (300 queries) | nDCG@10 | Recall@100 | MRR@10 | |");
Console.WriteLine("|---|---|---|---|---|");
foreach (var r in rows) Console.WriteLine(r);
Console.WriteLine("Published: BM25 0.665 (BEIR), 0.679 (Anserini flat); all-MiniLM-L6-v2 0.645 (MTEB).");
Console.WriteLine($"Query embedding: {queriesPerSecond:F0} queries/s (batches of 32).");

// Query latency of the two stores on the same document vectors, one query at a time.
Console.WriteLine();
Console.WriteLine("| store, SciFact vectors (5,183 × 384), top 10, one query at a time | p50 ms | p99 ms | recall@10 vs exact | load |");
Console.WriteLine("|---|---|---|---|---|");
var testVectors = test.Keys.Select(q => (ReadOnlyMemory<float>)vectorOf[q]).ToList();
var exact = new List<IReadOnlyList<string>>();
var memoryTimes = new List<double>();
foreach (var q in testVectors)
{
    var sw = Stopwatch.StartNew();
    var hits = await documents.SearchAsync(q, 10).Select(r => r.Record.Id).ToListAsync();
    memoryTimes.Add(sw.Elapsed.TotalMilliseconds);
    exact.Add(hits);
}
Console.WriteLine($"| in memory (exact) | {Percentile(memoryTimes, 50):F2} | {Percentile(memoryTimes, 99):F2} | 1.000 | {(cached ? "from the cache file" : "embedded this run")} |");
if (!args.Contains("--no-pgvector"))
{
    using var server = new PostgresServer();
    if (server.Unavailable is { } why) Console.WriteLine($"| pgvector | skipped: {why} | | | |");
    else
    {
        foreach (var ef in new int?[] { null, 100 })
        {
            using var store = await PgVectorStore.CreateAsync(server.NewDatabase(), options: new PgVectorStoreOptions { EfSearch = ef });
            var collection = store.GetCollection<string, DocumentVector>("scifact");
            await collection.EnsureCollectionExistsAsync();
            clock.Restart();
            var all = await documents.GetAsync(_ => true, int.MaxValue, new() { IncludeVectors = true }).ToListAsync();
            foreach (var chunk in all.Chunk(500)) await collection.UpsertAsync(chunk);
            var load = clock.Elapsed;
            var times = new List<double>();
            double recall = 0;
            for (int i = 0; i < testVectors.Count; i++)
            {
                var sw = Stopwatch.StartNew();
                var hits = await collection.SearchAsync(testVectors[i], 10).Select(r => r.Record.Id).ToListAsync();
                times.Add(sw.Elapsed.TotalMilliseconds);
                recall += hits.Intersect(exact[i]).Count() / 10.0;
            }
            Console.WriteLine($"| pgvector 0.8, HNSW m 16, ef_construction 64, ef_search {ef?.ToString() ?? "40 (default)"} | {Percentile(times, 50):F2} | {Percentile(times, 99):F2} | {recall / testVectors.Count:F3} | upsert + index {load.TotalSeconds:F1} s |");
        }
    }
}
return 0;

static double Percentile(List<double> values, int p)
{
    var sorted = values.Order().ToList();
    return sorted[Math.Min(sorted.Count - 1, (int)Math.Ceiling(p / 100.0 * sorted.Count) - 1)];
}

// The corpus's vectors: read from the cache when this encoder, these settings and this corpus were embedded before.
static (double Seconds, bool Cached) EmbedCorpus(BeirDataset data, SentenceEmbedder embedder, InMemoryVectorCollection<string, DocumentVector> documents, string folder, string encoderKey)
{
    string corpusHash = Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(Path.Combine(folder, "corpus.jsonl"))));
    string key = Convert.ToHexString(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(
        $"{encoderKey}/{AllMiniLmL6V2.PackageVersion}/{embedder.Options.MaxLength}/{embedder.Options.Pooling}/{embedder.Options.Normalize}/{corpusHash}")))[..24].ToLowerInvariant();
    var cacheRoot = Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
    var path = Path.Combine(cacheRoot, "mlnetpeft", "embeddings", $"scifact-{key}.safetensors");
    if (File.Exists(path))
    {
        documents.Load(path);
        if (documents.Count == data.Corpus.Count) return (0, true);
    }
    documents.EnsureCollectionExistsAsync().GetAwaiter().GetResult();
    var clock = Stopwatch.StartNew();
    var vectors = embedder.Embed(data.Corpus.Select(d => d.FullText).ToList());
    double seconds = clock.Elapsed.TotalSeconds;
    documents.UpsertAsync(data.Corpus.Select((d, i) => new DocumentVector { Id = d.Id, Vector = vectors[i] })).GetAwaiter().GetResult();
    Directory.CreateDirectory(Path.GetDirectoryName(path)!);
    documents.Save(path);
    return (seconds, false);
}

sealed class DocumentVector
{
    [VectorStoreKey] public string Id { get; set; } = "";
    [VectorStoreVector(384)] public ReadOnlyMemory<float>? Vector { get; set; }
}
