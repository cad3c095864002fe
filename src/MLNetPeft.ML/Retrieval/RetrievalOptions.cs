using Microsoft.Extensions.Configuration;
using MLNetPeft.Architectures;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Retrieval.Embeddings;
using MLNetPeft.Retrieval.Retrievers;
using MLNetPeft.Retrieval.VectorStores.PgVector;
using MLNetPeft.Tokenization;

namespace MLNetPeft.ML.Retrieval;

/// <summary>Settings of <c>mlContext.Retrieval().Retrieve(...)</c>.</summary>
public sealed class RetrievalOptions
{
    /// <summary>The text column of the rows to retrieve for.</summary>
    public string QueryColumnName { get; set; } = "Query";
    /// <summary>The corpus's document id column (text).</summary>
    public string DocumentIdColumnName { get; set; } = "Id";
    /// <summary>The corpus's document text column.</summary>
    public string DocumentTextColumnName { get; set; } = "Text";
    /// <summary>Output: the passages' texts, best first (a variable-length vector of text).</summary>
    public string PassagesColumnName { get; set; } = "Passages";
    /// <summary>Output: the passages' ids ("document#chunk", or the document id when documents are not chunked).</summary>
    public string PassageIdsColumnName { get; set; } = "PassageIds";
    /// <summary>Output: the passages' scores (cosine similarity, BM25 score or RRF score), best first.</summary>
    public string ScoresColumnName { get; set; } = "PassageScores";

    /// <summary>Passages per query.</summary>
    public int Top { get; set; } = 5;
    public RetrievalMode Mode { get; set; } = RetrievalMode.Dense;
    /// <summary>Cut documents into passages of at most this many tokens of the encoder (null: whole documents, truncated by the encoder at its maximum length).</summary>
    public int? ChunkTokens { get; set; }
    /// <summary>Tokens a passage repeats of the one before when documents are chunked.</summary>
    public int ChunkOverlap { get; set; } = 32;

    /// <summary>The encoder (with <see cref="Tokenizer"/>); null: the bundled all-MiniLM-L6-v2.</summary>
    public BertModel? Encoder { get; set; }
    public TextTokenizer? Tokenizer { get; set; }
    public SentenceEmbedderOptions Embedding { get; set; } = new();
    /// <summary>Whether a saved zip embeds a given encoder or refers to its folder (the bundled one is always referenced).</summary>
    public BaseModelStorage EncoderStorage { get; set; } = BaseModelStorage.Auto;

    /// <summary>Where the knowledge base lives and what a saved zip keeps of it (inside the zip by default).</summary>
    public KnowledgeBaseStorage Storage { get; set; } = KnowledgeBaseStorage.InsideZip;
    /// <summary><see cref="KnowledgeBaseStorage.File"/>: the file Fit writes the passages and vectors to (safetensors, atomically); the zip refers to it by full path and SHA-256.</summary>
    public string? KnowledgeBasePath { get; set; }
    /// <summary><see cref="KnowledgeBaseStorage.PgVector"/>: the name of the connection string (<c>ConnectionStrings:{name}</c>); only the name goes into a saved zip.</summary>
    public string? ConnectionStringName { get; set; }
    /// <summary><see cref="KnowledgeBaseStorage.PgVector"/>: the table Fit fills with the corpus's passages, replacing what it held.</summary>
    public string CollectionName { get; set; } = "passages";
    /// <summary><see cref="KnowledgeBaseStorage.PgVector"/>: the store's schema, HNSW and search settings (schema and ef_search are saved with the pipeline).</summary>
    public PgVectorStoreOptions? PgVector { get; set; }
    /// <summary>Where Fit looks <see cref="ConnectionStringName"/> up; null: <see cref="RetrievalConnections.Configuration"/>. Loading a saved pipeline always uses the latter.</summary>
    public IConfiguration? Configuration { get; set; }

    internal void Validate()
    {
        if (!Enum.IsDefined(Storage)) throw new ArgumentOutOfRangeException(nameof(Storage), Storage, "not a KnowledgeBaseStorage");
        if (Storage == KnowledgeBaseStorage.File && string.IsNullOrWhiteSpace(KnowledgeBasePath))
            throw new ArgumentException("Storage = File needs KnowledgeBasePath: the file Fit writes the knowledge base to.", nameof(KnowledgeBasePath));
        if (Storage == KnowledgeBaseStorage.PgVector)
        {
            if (string.IsNullOrWhiteSpace(ConnectionStringName))
                throw new ArgumentException("Storage = PgVector needs ConnectionStringName: the name of a connection string in the configuration (ConnectionStrings:{name}).", nameof(ConnectionStringName));
            PgVectorStore.CheckName(CollectionName, nameof(CollectionName));
        }
        foreach (var (name, value) in new[] { (nameof(QueryColumnName), QueryColumnName), (nameof(DocumentIdColumnName), DocumentIdColumnName),
                     (nameof(DocumentTextColumnName), DocumentTextColumnName), (nameof(PassagesColumnName), PassagesColumnName),
                     (nameof(PassageIdsColumnName), PassageIdsColumnName), (nameof(ScoresColumnName), ScoresColumnName) })
            if (string.IsNullOrWhiteSpace(value)) throw new ArgumentException($"{name} needs a column name.", name);
        if (Top is < 1 or > 1000) throw new ArgumentOutOfRangeException(nameof(Top), Top, "must be in [1, 1000]");
        if (!Enum.IsDefined(Mode)) throw new ArgumentOutOfRangeException(nameof(Mode), Mode, "not a RetrievalMode");
        if (ChunkTokens is < 8) throw new ArgumentOutOfRangeException(nameof(ChunkTokens), ChunkTokens, "must be at least 8 (or null: whole documents)");
        if (ChunkTokens is { } c && (ChunkOverlap < 0 || ChunkOverlap >= c)) throw new ArgumentOutOfRangeException(nameof(ChunkOverlap), ChunkOverlap, $"must be in [0, ChunkTokens − 1 = {c - 1}]");
        EmbedderPackage.CheckPair(Encoder, Tokenizer);
    }
}
