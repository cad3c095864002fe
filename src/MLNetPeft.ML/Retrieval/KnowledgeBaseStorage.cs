using Microsoft.Extensions.Configuration;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Retrieval.Chunking;
using MLNetPeft.Retrieval.Embeddings;
using MLNetPeft.Retrieval.Retrievers;
using MLNetPeft.Retrieval.VectorStores.PgVector;

namespace MLNetPeft.ML.Retrieval;

/// <summary>Where the retrieval stage keeps its knowledge base (passages and vectors), and so what a saved zip holds of it.</summary>
public enum KnowledgeBaseStorage
{
    /// <summary>In memory; the zip holds the passages and vectors (one safetensors file).</summary>
    InsideZip,
    /// <summary>
    /// In memory; Fit writes the passages and vectors to <see cref="RetrievalOptions.KnowledgeBasePath"/> and the zip
    /// refers to that file by path and SHA-256 (as a referenced base model): loading fails clearly when the file is
    /// missing or changed. For knowledge bases too large to copy into every zip.
    /// </summary>
    File,
    /// <summary>
    /// A PostgreSQL table with pgvector (HNSW, cosine), named by <see cref="RetrievalOptions.CollectionName"/> on the
    /// database of the connection string <see cref="RetrievalOptions.ConnectionStringName"/>. Fit fills the table with
    /// the corpus's passages (replacing what it held); the zip keeps the connection string's name and the table, never
    /// the connection string, which is looked up in <see cref="RetrievalConnections.Configuration"/> again at load.
    /// </summary>
    PgVector,
}

/// <summary>
/// Where the retrieval stage looks a connection string up by name: <c>ConnectionStrings:{name}</c>, as
/// <c>IConfiguration.GetConnectionString</c> reads it. A saved pipeline stores only the name, so the machine that
/// loads it supplies the connection string (and its password) from its own configuration.
/// </summary>
public static class RetrievalConnections
{
    /// <summary>
    /// The configuration names are looked up in; an app sets it once at start-up (to its host's <c>IConfiguration</c>,
    /// say). Null (the default): <c>appsettings.json</c> in the app's folder, then environment variables
    /// (<c>ConnectionStrings__{name}</c>), read at each lookup, as a default .NET host reads them.
    /// </summary>
    public static IConfiguration? Configuration { get; set; }

    /// <exception cref="InvalidOperationException">No connection string of that name.</exception>
    internal static string Resolve(string name, IConfiguration? given)
    {
        var configuration = given ?? Configuration;
        IDisposable? built = null;
        if (configuration is null)
        {
            var root = new ConfigurationBuilder()
                .AddJsonFile(Path.Combine(AppContext.BaseDirectory, "appsettings.json"), optional: true, reloadOnChange: false)
                .AddEnvironmentVariables().Build();
            (configuration, built) = (root, root as IDisposable);
        }
        try
        {
            return configuration.GetConnectionString(name) is { Length: > 0 } connectionString ? connectionString
                : throw new InvalidOperationException($"No connection string named '{name}' (ConnectionStringName): set ConnectionStrings:{name} in the configuration " +
                    $"(RetrievalOptions.Configuration at Fit, RetrievalConnections.Configuration, appsettings.json or the environment variable ConnectionStrings__{name}).");
        }
        finally
        {
            built?.Dispose();
        }
    }
}

/// <summary>What a zip keeps of a knowledge base that is not inside it: the referenced file, or the database by connection-string name.</summary>
internal sealed record KnowledgeBaseLocation(KnowledgeBaseStorage Kind, string? Path = null, string? Sha256 = null,
    string? ConnectionStringName = null, string? Collection = null, string? Schema = null, int? EfSearch = null)
{
    public bool IsValid => Kind switch
    {
        KnowledgeBaseStorage.File => !string.IsNullOrEmpty(Path) && Sha256 is { Length: 64 },
        KnowledgeBaseStorage.PgVector => !string.IsNullOrEmpty(ConnectionStringName) && !string.IsNullOrEmpty(Collection) && !string.IsNullOrEmpty(Schema) && EfSearch is null or (>= 1 and <= 1000),
        _ => false,
    };
}

/// <summary>A knowledge base and what was opened for it (a database store), disposed together.</summary>
internal sealed class OpenedKnowledgeBase(KnowledgeBase knowledgeBase, PgVectorStore? store) : IDisposable
{
    public KnowledgeBase KnowledgeBase { get; } = knowledgeBase;

    public void Dispose()
    {
        KnowledgeBase.Dispose();
        store?.Dispose();
    }

    /// <summary>Builds the knowledge base where <paramref name="options"/> say; the location is null when it goes inside the zip.</summary>
    public static (OpenedKnowledgeBase Opened, KnowledgeBaseLocation? Location) Build(RetrievalOptions options, SentenceEmbedder embedder,
        IReadOnlyList<(string Id, string Text)> documents, TokenChunker? chunker)
    {
        switch (options.Storage)
        {
            case KnowledgeBaseStorage.PgVector:
            {
                var connectionString = RetrievalConnections.Resolve(options.ConnectionStringName!, options.Configuration);
                var pg = options.PgVector ?? new PgVectorStoreOptions();
                var store = PgVectorStore.CreateAsync(connectionString, options: pg).GetAwaiter().GetResult();
                try
                {
                    var collection = store.GetCollection<string, KnowledgeBase.StoredPassage>(options.CollectionName, KnowledgeBase.Definition(embedder.Dimension));
                    var knowledgeBase = KnowledgeBase.BuildAsync(embedder, documents, collection, chunker).GetAwaiter().GetResult();
                    return (new OpenedKnowledgeBase(knowledgeBase, store),
                        new KnowledgeBaseLocation(KnowledgeBaseStorage.PgVector, ConnectionStringName: options.ConnectionStringName, Collection: options.CollectionName, Schema: pg.Schema, EfSearch: pg.EfSearch));
                }
                catch
                {
                    store.Dispose();
                    throw;
                }
            }
            case KnowledgeBaseStorage.File:
            {
                var knowledgeBase = KnowledgeBase.Build(embedder, documents, chunker);
                try
                {
                    var path = System.IO.Path.GetFullPath(options.KnowledgeBasePath!);
                    knowledgeBase.Save(path);
                    return (new OpenedKnowledgeBase(knowledgeBase, null), new KnowledgeBaseLocation(KnowledgeBaseStorage.File, path, StoredFolder.Hash(path)));
                }
                catch
                {
                    knowledgeBase.Dispose();
                    throw;
                }
            }
            default:
                return (new OpenedKnowledgeBase(KnowledgeBase.Build(embedder, documents, chunker), null), null);
        }
    }

    /// <summary>Opens the knowledge base a zip refers to.</summary>
    public static OpenedKnowledgeBase Open(KnowledgeBaseLocation location, SentenceEmbedder embedder)
    {
        if (location.Kind == KnowledgeBaseStorage.File)
        {
            var path = location.Path!;
            if (!System.IO.File.Exists(path))
                throw new FileNotFoundException($"The model zip refers to the knowledge base file '{path}', which does not exist on this machine. " +
                    "Copy it there, or save the pipeline with KnowledgeBaseStorage.InsideZip.", path);
            var actual = StoredFolder.Hash(path);
            if (actual != location.Sha256)
                throw new InvalidDataException($"The knowledge base file '{path}' has SHA-256 {actual}, but the model zip was saved against {location.Sha256}: " +
                    "it was rebuilt or changed since. Restore it, or fit and save the pipeline again.");
            return new OpenedKnowledgeBase(KnowledgeBase.Load(path, embedder), null);
        }
        var connectionString = RetrievalConnections.Resolve(location.ConnectionStringName!, given: null);
        var store = PgVectorStore.CreateAsync(connectionString, options: new PgVectorStoreOptions { Schema = location.Schema!, EfSearch = location.EfSearch })
            .GetAwaiter().GetResult();
        try
        {
            var collection = store.GetCollection<string, KnowledgeBase.StoredPassage>(location.Collection!, KnowledgeBase.Definition(embedder.Dimension));
            return new OpenedKnowledgeBase(KnowledgeBase.OpenAsync(embedder, collection).GetAwaiter().GetResult(), store);
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }
}
