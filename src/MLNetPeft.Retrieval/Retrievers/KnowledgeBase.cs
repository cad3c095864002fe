using Microsoft.Extensions.VectorData;
using MLNetPeft.Retrieval.Chunking;
using MLNetPeft.Retrieval.Embeddings;
using MLNetPeft.Retrieval.Evaluation;
using MLNetPeft.Retrieval.Lexical;
using MLNetPeft.Retrieval.VectorStores;

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
/// each embedded into an in-memory collection (exact cosine) and indexed with BM25, searched densely, lexically or
/// both (RRF). Holds its own collection and index and disposes them; the embedder is the caller's.
/// </summary>
public sealed class KnowledgeBase : IDisposable
{
    private const int Candidates = 100;

    private readonly InMemoryVectorCollection<string, StoredPassage> _vectors;
    private readonly Bm25Index _bm25;
    private readonly Dictionary<string, StoredPassage> _passages;

    private KnowledgeBase(SentenceEmbedder embedder, InMemoryVectorCollection<string, StoredPassage> vectors, Dictionary<string, StoredPassage> passages)
    {
        Embedder = embedder;
        _vectors = vectors;
        _passages = passages;
        _bm25 = Bm25Index.InMemory();
        _bm25.AddOrReplace(passages.Values.Select(p => (p.Id, p.Text)));
    }

    public SentenceEmbedder Embedder { get; }

    /// <summary>Passages held.</summary>
    public int Count => _passages.Count;

    /// <summary>Embeds and indexes <paramref name="documents"/>, cut by <paramref name="chunker"/> when given (whole documents otherwise).</summary>
    /// <exception cref="ArgumentException">No documents, an empty or repeated id, or no text at all.</exception>
    public static KnowledgeBase Build(SentenceEmbedder embedder, IEnumerable<(string Id, string Text)> documents, TokenChunker? chunker = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(embedder);
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
        var collection = NewCollection(embedder.Dimension);
        collection.EnsureCollectionExistsAsync(cancellationToken).GetAwaiter().GetResult();
        collection.UpsertAsync(passages, cancellationToken).GetAwaiter().GetResult();
        return new KnowledgeBase(embedder, collection, passages.ToDictionary(p => p.Id, StringComparer.Ordinal));
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
        if (mode != RetrievalMode.Lexical)
        {
            var vectors = Embedder.Embed(queries);
            var hits = _vectors.SearchBatchAsync(vectors.Select(v => (ReadOnlyMemory<float>)v).ToList(), depth).GetAwaiter().GetResult();
            dense = hits.Select(h => (IReadOnlyList<RankedDocument>)h.Select(r => new RankedDocument(r.Record.Id, r.Score!.Value)).ToList()).ToList();
        }
        if (mode != RetrievalMode.Dense) lexical = queries.Select(q => _bm25.Search(q ?? "", depth)).ToList();
        return Enumerable.Range(0, queries.Count).Select(i =>
        {
            var ranking = mode switch
            {
                RetrievalMode.Dense => dense![i],
                RetrievalMode.Lexical => lexical![i],
                _ => HybridFusion.ReciprocalRank([dense![i], lexical![i]], top),
            };
            return (IReadOnlyList<RetrievedPassage>)ranking.Take(top).Select(r => Passage(r)).ToList();
        }).ToList();
    }

    private RetrievedPassage Passage(RankedDocument r)
    {
        var p = _passages[r.DocumentId];
        return new RetrievedPassage(p.Id, p.DocumentId, p.Text, r.Score);
    }

    /// <summary>Writes the passages and their vectors to <paramref name="path"/> (one safetensors file, written atomically).</summary>
    public void Save(string path) => _vectors.Save(path);

    /// <summary>Reads what <see cref="Save"/> wrote; the vectors must have the embedder's dimension. The BM25 index is rebuilt from the passages.</summary>
    /// <exception cref="InvalidDataException">The file is not a saved knowledge base of this dimension.</exception>
    public static KnowledgeBase Load(string path, SentenceEmbedder embedder)
    {
        ArgumentNullException.ThrowIfNull(embedder);
        var collection = NewCollection(embedder.Dimension);
        try
        {
            collection.Load(path);
            var passages = collection.GetAsync(_ => true, int.MaxValue).ToListAsync().AsTask().GetAwaiter().GetResult();
            if (passages.Count == 0) throw new InvalidDataException($"'{path}' holds no passages.");
            return new KnowledgeBase(embedder, collection, passages.ToDictionary(p => p.Id, StringComparer.Ordinal));
        }
        catch
        {
            collection.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        _vectors.Dispose();
        _bm25.Dispose();
    }

    private static InMemoryVectorCollection<string, StoredPassage> NewCollection(int dimension) =>
        new("passages", new VectorStoreCollectionDefinition
        {
            Properties =
            [
                new VectorStoreKeyProperty(nameof(StoredPassage.Id), typeof(string)),
                new VectorStoreDataProperty(nameof(StoredPassage.DocumentId), typeof(string)),
                new VectorStoreDataProperty(nameof(StoredPassage.Text), typeof(string)),
                new VectorStoreVectorProperty(nameof(StoredPassage.Vector), typeof(ReadOnlyMemory<float>?), dimension) { DistanceFunction = DistanceFunction.CosineSimilarity },
            ],
        });

    /// <summary>A passage as the collection stores it.</summary>
    public sealed class StoredPassage
    {
        public string Id { get; set; } = "";
        public string DocumentId { get; set; } = "";
        public string Text { get; set; } = "";
        public ReadOnlyMemory<float>? Vector { get; set; }
    }
}
