using Microsoft.Extensions.AI;
using Microsoft.Extensions.VectorData;
using Npgsql;
using Pgvector.Npgsql;

namespace MLNetPeft.Retrieval.VectorStores.PgVector;

/// <summary>Settings of a <see cref="PgVectorStore"/>.</summary>
public sealed class PgVectorStoreOptions
{
    /// <summary>The schema the collections' tables live in.</summary>
    public string Schema { get; set; } = "public";

    /// <summary>HNSW's m (links per node; pgvector's default 16).</summary>
    public int HnswM { get; set; } = 16;

    /// <summary>HNSW's ef_construction (candidate list while building; pgvector's default 64).</summary>
    public int HnswEfConstruction { get; set; } = 64;

    /// <summary>hnsw.ef_search for searches (candidate list while searching; null keeps the server's, 40 by default). Higher: better recall, slower.</summary>
    public int? EfSearch { get; set; }

    /// <summary>
    /// maintenance_work_mem while <see cref="PgVectorCollection{TKey, TRecord}.BulkLoadAsync"/> builds the HNSW index, in
    /// MB. pgvector builds the graph in memory while it fits (about rows × (4·d + 8·m·2) bytes; 1.9 GB for 1M × 384 at m 16)
    /// and much more slowly on disk after that. The server's own default is 64 MB.
    /// </summary>
    public int IndexBuildMemoryMegabytes { get; set; } = 1024;

    internal void Validate()
    {
        if (IndexBuildMemoryMegabytes is < 1 or > 1 << 20) throw new ArgumentOutOfRangeException(nameof(IndexBuildMemoryMegabytes), IndexBuildMemoryMegabytes, "must be in [1, 1048576] MB");
        PgSql.CheckName(Schema, nameof(Schema));
        if (HnswM is < 2 or > 100) throw new ArgumentOutOfRangeException(nameof(HnswM), HnswM, "must be in [2, 100] (pgvector's range)");
        if (HnswEfConstruction < 2 * HnswM || HnswEfConstruction > 1000) throw new ArgumentOutOfRangeException(nameof(HnswEfConstruction), HnswEfConstruction, $"must be in [2·m = {2 * HnswM}, 1000] (pgvector's range)");
        if (EfSearch is < 1 or > 1000) throw new ArgumentOutOfRangeException(nameof(EfSearch), EfSearch, "must be in [1, 1000] (pgvector's range)");
    }
}

/// <summary>
/// PostgreSQL with pgvector behind VectorData's <see cref="VectorStore"/>: each collection is a table with HNSW indexes
/// (<see cref="PgVectorCollection{TKey, TRecord}"/>). <see cref="CreateAsync"/> builds the connection pool from a connection
/// string and makes sure the <c>vector</c> extension exists; a pool given to the constructor is the caller's.
/// </summary>
public sealed class PgVectorStore : VectorStore
{
    private readonly NpgsqlDataSource _dataSource;
    private readonly bool _ownsDataSource;
    private readonly IEmbeddingGenerator? _embeddingGenerator;
    private readonly PgVectorStoreOptions _options;
    private readonly VectorStoreMetadata _metadata;

    /// <param name="dataSource">A pool built with pgvector's type mapping (<c>NpgsqlDataSourceBuilder.UseVector()</c>), on a database where the <c>vector</c> extension exists.</param>
    public PgVectorStore(NpgsqlDataSource dataSource, IEmbeddingGenerator? embeddingGenerator = null, PgVectorStoreOptions? options = null)
        : this(dataSource, ownsDataSource: false, embeddingGenerator, options)
    {
    }

    private PgVectorStore(NpgsqlDataSource dataSource, bool ownsDataSource, IEmbeddingGenerator? embeddingGenerator, PgVectorStoreOptions? options)
    {
        _dataSource = dataSource ?? throw new ArgumentNullException(nameof(dataSource));
        _ownsDataSource = ownsDataSource;
        _embeddingGenerator = embeddingGenerator;
        _options = options ?? new PgVectorStoreOptions();
        _options.Validate();
        _metadata = new VectorStoreMetadata { VectorStoreSystemName = "postgresql", VectorStoreName = new NpgsqlConnectionStringBuilder(dataSource.ConnectionString).Database };
    }

    /// <summary>
    /// A store on the database of <paramref name="connectionString"/>: creates the <c>vector</c> extension when it is
    /// missing (the user needs the right to), then builds the pool with pgvector's types.
    /// </summary>
    /// <exception cref="VectorStoreException">The server cannot be reached or pgvector is not installed on it (the message names the server, not the password).</exception>
    public static async Task<PgVectorStore> CreateAsync(string connectionString, IEmbeddingGenerator? embeddingGenerator = null, PgVectorStoreOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(connectionString);
        // The extension must exist before a pool with pgvector's type mapping opens its first connection.
        await using (var plain = NpgsqlDataSource.Create(connectionString))
        {
            await using var connection = await PgSql.OpenAsync(plain, cancellationToken).ConfigureAwait(false);
            await using var command = new NpgsqlCommand("CREATE EXTENSION IF NOT EXISTS vector", connection);
            try
            {
                await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (PostgresException e)
            {
                throw new VectorStoreException($"The pgvector extension is not available on {PgSql.Target(plain)} ({e.MessageText}); install it (eng/ensure-pgvector.sh on Debian).", e);
            }
        }
        var builder = new NpgsqlDataSourceBuilder(connectionString);
        builder.UseVector();
        return new PgVectorStore(builder.Build(), ownsDataSource: true, embeddingGenerator, options);
    }

    /// <summary>Checks a collection or schema name as the store will (1–63 letters, digits, '_' and '-'), so options can be refused before anything connects.</summary>
    /// <exception cref="ArgumentException">The name does not fit; the message and parameter name are <paramref name="option"/>'s.</exception>
    public static string CheckName(string name, string option) => PgSql.CheckName(name, option);

    public override VectorStoreCollection<TKey, TRecord> GetCollection<TKey, TRecord>(string name, VectorStoreCollectionDefinition? definition = null) =>
        new PgVectorCollection<TKey, TRecord>(_dataSource, name, definition, _embeddingGenerator, _options);

    public override VectorStoreCollection<object, Dictionary<string, object?>> GetDynamicCollection(string name, VectorStoreCollectionDefinition definition) =>
        new PgVectorCollection<object, Dictionary<string, object?>>(_dataSource, name, definition ?? throw new ArgumentNullException(nameof(definition)), _embeddingGenerator, _options);

    public override async IAsyncEnumerable<string> ListCollectionNamesAsync([System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        // Tables of the schema that have a vector column: the collections, not other tables that share the schema.
        var names = new List<string>();
        await using (var connection = await PgSql.OpenAsync(_dataSource, cancellationToken).ConfigureAwait(false))
        await using (var command = new NpgsqlCommand("SELECT DISTINCT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace " +
            "JOIN pg_attribute a ON a.attrelid = c.oid WHERE n.nspname = @s AND c.relkind = 'r' AND a.atttypid = 'vector'::regtype ORDER BY 1", connection))
        {
            command.Parameters.AddWithValue("s", _options.Schema);
            await using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false)) names.Add(reader.GetString(0));
        }
        foreach (var name in names) yield return name;
    }

    public override Task<bool> CollectionExistsAsync(string name, CancellationToken cancellationToken = default) =>
        GetCollection<object, Dictionary<string, object?>>(name, new VectorStoreCollectionDefinition { Properties = [new VectorStoreKeyProperty("Key", typeof(string))] })
            .CollectionExistsAsync(cancellationToken);

    public override Task EnsureCollectionDeletedAsync(string name, CancellationToken cancellationToken = default) =>
        GetCollection<object, Dictionary<string, object?>>(name, new VectorStoreCollectionDefinition { Properties = [new VectorStoreKeyProperty("Key", typeof(string))] })
            .EnsureCollectionDeletedAsync(cancellationToken);

    public override object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(VectorStoreMetadata)) return _metadata;
        if (serviceType == typeof(NpgsqlDataSource)) return _dataSource;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && _ownsDataSource) _dataSource.Dispose();
        base.Dispose(disposing);
    }
}
