using Microsoft.Extensions.VectorData;
using MLNetPeft.Retrieval.Chunking;
using MLNetPeft.Retrieval.Embeddings;
using MLNetPeft.Retrieval.Evaluation;
using MLNetPeft.Retrieval.Lexical;
using MLNetPeft.Retrieval.VectorStores;
using MLNetPeft.Retrieval.VectorStores.PgVector;

namespace MLNetPeft.Retrieval.Retrievers;

/// <summary>How a <see cref="KnowledgeBase"/> finds passages for a query.</summary>
public enum RetrievalMode
{
    /// <summary>Exact cosine search over the passages' embeddings.</summary>
    Dense,
    /// <summary>BM25 over the passages' words.</summary>
    Lexical,
    /// <summary>Both, fused by reciprocal rank (k = 60).</summary>
    Hybrid,
}

/// <summary>A passage found for a query: its id ("document#chunk"), its document's id, its text and its score (higher is better).</summary>
public sealed record RetrievedPassage(string Id, string DocumentId, string Text, double Score);

/// <summary>
/// The retrieval side of RAG without ML.NET: documents cut into passages (<see cref="TokenChunker"/>, or whole),
/// each embedded into a VectorData collection and indexed with BM25, searched densely, lexically or both (RRF). The
/// collection is the library's in-memory one (exact cosine, one matrix product per query batch) by default, or any
/// <see cref="VectorStoreCollection{TKey, TRecord}"/> of <see cref="StoredPassage"/> records the caller gives (pgvector
/// for scale, or another connector). The BM25 index lives in memory: built from the passages, or, over a collection
/// opened with <see cref="OpenAsync"/>, read from it at the first lexical or hybrid search. Disposes what it created;
/// a given collection and the embedder stay the caller's.
/// </summary>
public sealed class KnowledgeBase : IDisposable
{
    private const int Candidates = 100;

    private readonly VectorStoreCollection<string, StoredPassage> _vectors;
    private readonly bool _ownsCollection;
    private readonly Lazy<LexicalIndex> _lexical;

    private KnowledgeBase(SentenceEmbedder embedder, VectorStoreCollection<string, StoredPassage> vectors, bool ownsCollection, IReadOnlyList<StoredPassage>? passages)
    {
        Embedder = embedder;
        _vectors = vectors;
        _ownsCollection = ownsCollection;
        _lexical = passages is null
            ? new Lazy<LexicalIndex>(() => LexicalIndex.Of(ReadAll(vectors)), LazyThreadSafetyMode.ExecutionAndPublication)
            : new Lazy<LexicalIndex>(LexicalIndex.Of(passages));
    }

    public SentenceEmbedder Embedder { get; }

    /// <summary>The collection the passages and their vectors are in.</summary>
    public VectorStoreCollection<string, StoredPassage> Collection => _vectors;

    /// <summary>Passages held (over an opened collection, this reads them all once, as a lexical search does).</summary>
    public int Count => _lexical.Value.Passages.Count;

    /// <summary>Embeds and indexes <paramref name="documents"/> into an in-memory collection, cut by <paramref name="chunker"/> when given (whole documents otherwise).</summary>
    /// <exception cref="ArgumentException">No documents, an empty or repeated id, or no text at all.</exception>
    public static KnowledgeBase Build(SentenceEmbedder embedder, IEnumerable<(string Id, string Text)> documents, TokenChunker? chunker = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(embedder);
        var passages = EmbeddedPassages(embedder, documents, chunker, cancellationToken);
        var collection = new InMemoryVectorCollection<string, StoredPassage>("passages", Definition(embedder.Dimension));
        try
        {
            collection.EnsureCollectionExistsAsync(cancellationToken).GetAwaiter().GetResult();
            collection.UpsertAsync(passages, cancellationToken).GetAwaiter().GetResult();
            return new KnowledgeBase(embedder, collection, ownsCollection: true, passages);
        }
        catch
        {
            collection.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Embeds and indexes <paramref name="documents"/> into <paramref name="collection"/> (for instance a pgvector
    /// collection of <see cref="Definition"/>'s records), which then holds exactly these passages: whatever it held
    /// before is deleted. A pgvector collection is filled by bulk COPY with its index built afterwards. The collection
    /// stays the caller's.
    /// </summary>
    public static async Task<KnowledgeBase> BuildAsync(SentenceEmbedder embedder, IEnumerable<(string Id, string Text)> documents, VectorStoreCollection<string, StoredPassage> collection,
        TokenChunker? chunker = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(embedder);
        ArgumentNullException.ThrowIfNull(collection);
        var passages = EmbeddedPassages(embedder, documents, chunker, cancellationToken);
        await collection.EnsureCollectionDeletedAsync(cancellationToken).ConfigureAwait(false);
        if (collection is PgVectorCollection<string, StoredPassage> pg) await pg.BulkLoadAsync(passages, cancellationToken).ConfigureAwait(false);
        else
        {
            await collection.EnsureCollectionExistsAsync(cancellationToken).ConfigureAwait(false);
            foreach (var chunk in passages.Chunk(1024)) await collection.UpsertAsync(chunk, cancellationToken).ConfigureAwait(false);
        }
        return new KnowledgeBase(embedder, collection, ownsCollection: false, passages);
    }

    /// <summary>
    /// A knowledge base over a collection that <see cref="BuildAsync"/> filled before (in this process or another): the
    /// collection must exist and have the embedder's dimension. It stays the caller's.
    /// </summary>
    /// <exception cref="VectorStoreException">The collection does not exist, or its vectors have another dimension.</exception>
    public static async Task<KnowledgeBase> OpenAsync(SentenceEmbedder embedder, VectorStoreCollection<string, StoredPassage> collection, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(embedder);
        ArgumentNullException.ThrowIfNull(collection);
        if (!await collection.CollectionExistsAsync(cancellationToken).ConfigureAwait(false))
            throw new VectorStoreException($"The knowledge base collection '{collection.Name}' does not exist in the store; build it first (KnowledgeBase.BuildAsync, or Fit of the retrieval stage).");
        await collection.EnsureCollectionExistsAsync(cancellationToken).ConfigureAwait(false);   // checks the dimension (pgvector) without changing the rows
        return new KnowledgeBase(embedder, collection, ownsCollection: false, passages: null);
    }

    /// <summary>The record definition of a knowledge base's collection: key Id, data DocumentId and Text, a cosine vector of <paramref name="dimension"/>.</summary>
    public static VectorStoreCollectionDefinition Definition(int dimension) => new()
    {
        Properties =
        [
            new VectorStoreKeyProperty(nameof(StoredPassage.Id), typeof(string)),
            new VectorStoreDataProperty(nameof(StoredPassage.DocumentId), typeof(string)),
            new VectorStoreDataProperty(nameof(StoredPassage.Text), typeof(string)),
            new VectorStoreVectorProperty(nameof(StoredPassage.Vector), typeof(ReadOnlyMemory<float>?), dimension) { DistanceFunction = DistanceFunction.CosineSimilarity },
        ],
    };

    private static List<StoredPassage> EmbeddedPassages(SentenceEmbedder embedder, IEnumerable<(string Id, string Text)> documents, TokenChunker? chunker, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(documents);
        var ids = new HashSet<string>(StringComparer.Ordinal);
        var passages = new List<StoredPassage>();
        foreach (var (id, text) in documents)
        {
            if (string.IsNullOrEmpty(id)) throw new ArgumentException("A document has no id.", nameof(documents));
            if (!ids.Add(id)) throw new ArgumentException($"The document id '{id}' occurs twice.", nameof(documents));
            if (string.IsNullOrWhiteSpace(text)) continue;
            if (chunker is null) passages.Add(new StoredPassage { Id = id, DocumentId = id, Text = text });
            else passages.AddRange(chunker.Chunk(id, text).Select(c => new StoredPassage { Id = c.Id, DocumentId = id, Text = c.Text }));
        }
        if (passages.Count == 0) throw new ArgumentException(ids.Count == 0 ? "The corpus is empty: there is nothing to retrieve." : "Every document of the corpus is empty.", nameof(documents));
        var vectors = embedder.Embed(passages.Select(p => p.Text).ToList(), cancellationToken);
        for (int i = 0; i < passages.Count; i++) passages[i].Vector = vectors[i];
        return passages;
    }

    private static List<StoredPassage> ReadAll(VectorStoreCollection<string, StoredPassage> collection)
    {
        var passages = collection.GetAsync(_ => true, int.MaxValue).ToListAsync().AsTask().GetAwaiter().GetResult();
        if (passages.Count == 0) throw new InvalidDataException($"The knowledge base collection '{collection.Name}' holds no passages.");
        return passages;
    }

    /// <summary>The best <paramref name="top"/> passages for each query, best first.</summary>
    public IReadOnlyList<IReadOnlyList<RetrievedPassage>> Retrieve(IReadOnlyList<string> queries, int top, RetrievalMode mode = RetrievalMode.Dense)
    {
        ArgumentNullException.ThrowIfNull(queries);
        ArgumentOutOfRangeException.ThrowIfLessThan(top, 1);
        if (!Enum.IsDefined(mode)) throw new ArgumentOutOfRangeException(nameof(mode), mode, "not a RetrievalMode");
        if (queries.Count == 0) return [];
        int depth = mode == RetrievalMode.Hybrid ? Math.Max(top, Candidates) : top;
        IReadOnlyList<IReadOnlyList<RankedDocument>>? dense = null, lexical = null;
        var found = new Dictionary<string, StoredPassage>(StringComparer.Ordinal);
        if (mode != RetrievalMode.Lexical)
        {
            var vectors = Embedder.Embed(queries).Select(v => (ReadOnlyMemory<float>)v).ToList();
            var hits = _vectors is InMemoryVectorCollection<string, StoredPassage> memory
                ? memory.SearchBatchAsync(vectors, depth).GetAwaiter().GetResult()
                : vectors.Select(v => (IReadOnlyList<VectorSearchResult<StoredPassage>>)_vectors.SearchAsync(v, depth).ToListAsync().AsTask().GetAwaiter().GetResult()).ToList();
            dense = hits.Select(h => (IReadOnlyList<RankedDocument>)h.Select(r => new RankedDocument(r.Record.Id, r.Score!.Value)).ToList()).ToList();
            foreach (var record in hits.SelectMany(h => h)) found[record.Record.Id] = record.Record;
        }
        if (mode != RetrievalMode.Dense)
        {
            var index = _lexical.Value;
            lexical = queries.Select(q => index.Bm25.Search(q ?? "", depth)).ToList();
            foreach (var id in lexical.SelectMany(l => l).Select(r => r.DocumentId)) found[id] = index.Passages[id];
        }
        return Enumerable.Range(0, queries.Count).Select(i =>
        {
            var ranking = mode switch
            {
                RetrievalMode.Dense => dense![i],
                RetrievalMode.Lexical => lexical![i],
                _ => HybridFusion.ReciprocalRank([dense![i], lexical![i]], top),
            };
            return (IReadOnlyList<RetrievedPassage>)ranking.Take(top).Select(r =>
            {
                var p = found[r.DocumentId];
                return new RetrievedPassage(p.Id, p.DocumentId, p.Text, r.Score);
            }).ToList();
        }).ToList();
    }

    /// <summary>Writes the passages and their vectors to <paramref name="path"/> (one safetensors file, written atomically).</summary>
    /// <exception cref="NotSupportedException">The passages are in a database collection, which keeps them itself.</exception>
    public void Save(string path)
    {
        if (_vectors is not InMemoryVectorCollection<string, StoredPassage> memory)
            throw new NotSupportedException($"The knowledge base's passages are in the store's collection '{_vectors.Name}', which keeps them; only an in-memory knowledge base is saved to a file.");
        memory.Save(path);
    }

    /// <summary>Reads what <see cref="Save"/> wrote into an in-memory collection; the vectors must have the embedder's dimension.</summary>
    /// <exception cref="InvalidDataException">The file is not a saved knowledge base of this dimension.</exception>
    public static KnowledgeBase Load(string path, SentenceEmbedder embedder)
    {
        ArgumentNullException.ThrowIfNull(embedder);
        var collection = new InMemoryVectorCollection<string, StoredPassage>("passages", Definition(embedder.Dimension));
        try
        {
            collection.Load(path);
            return new KnowledgeBase(embedder, collection, ownsCollection: true, ReadAll(collection));
        }
        catch
        {
            collection.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        if (_ownsCollection) _vectors.Dispose();
        if (_lexical.IsValueCreated) _lexical.Value.Bm25.Dispose();
    }

    /// <summary>BM25 over the passages, and the passages by id.</summary>
    private sealed record LexicalIndex(Bm25Index Bm25, Dictionary<string, StoredPassage> Passages)
    {
        public static LexicalIndex Of(IReadOnlyList<StoredPassage> passages)
        {
            var bm25 = Bm25Index.InMemory();
            bm25.AddOrReplace(passages.Select(p => (p.Id, p.Text)));
            return new LexicalIndex(bm25, passages.ToDictionary(p => p.Id, StringComparer.Ordinal));
        }
    }

    /// <summary>A passage as the collection stores it.</summary>
    public sealed class StoredPassage
    {
        public string Id { get; set; } = "";
        public string DocumentId { get; set; } = "";
        public string Text { get; set; } = "";
        public ReadOnlyMemory<float>? Vector { get; set; }
    }
}
