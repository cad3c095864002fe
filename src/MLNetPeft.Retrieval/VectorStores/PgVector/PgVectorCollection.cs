using System.Linq.Expressions;
using System.Runtime.CompilerServices;
using System.Text;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.VectorData;
using Microsoft.Extensions.VectorData.ProviderServices;
using Npgsql;
using NpgsqlTypes;

namespace MLNetPeft.Retrieval.VectorStores.PgVector;

/// <summary>
/// A collection in PostgreSQL with pgvector behind VectorData's <see cref="VectorStoreCollection{TKey, TRecord}"/>
/// contract: one table (the key as primary key, a column per data property, a <c>vector(d)</c> column per vector
/// property), an HNSW index per vector property (pgvector's operator class for its distance function), a B-tree
/// index per data property marked <c>IsIndexed</c>. <see cref="EnsureCollectionExistsAsync"/> creates what is
/// missing and adds data columns that a newer record type has (a migration); a vector column whose dimensions
/// differ from the record model's is refused with both named. Filters become SQL conditions with parameters;
/// filtered searches use pgvector's iterative index scans, so a selective filter still yields <c>top</c> results.
/// </summary>
public sealed class PgVectorCollection<TKey, TRecord> : VectorStoreCollection<TKey, TRecord>
    where TKey : notnull
    where TRecord : class
{
    private readonly NpgsqlDataSource _dataSource;
    private readonly PgVectorStoreOptions _options;
    private readonly CollectionModel _model;
    private readonly VectorStoreCollectionMetadata _metadata;
    private readonly string _table;

    internal PgVectorCollection(NpgsqlDataSource dataSource, string name, VectorStoreCollectionDefinition? definition, IEmbeddingGenerator? embeddingGenerator, PgVectorStoreOptions options)
    {
        _dataSource = dataSource;
        _options = options;
        Name = PgSql.CheckName(name, nameof(name));
        var builder = new PgVectorModelBuilder();
        _model = typeof(TRecord) == typeof(Dictionary<string, object?>)
            ? builder.BuildDynamic(definition ?? throw new ArgumentException("A collection of Dictionary<string, object?> records needs a VectorStoreCollectionDefinition.", nameof(definition)), embeddingGenerator)
            : builder.Build(typeof(TRecord), typeof(TKey), definition, embeddingGenerator);
        foreach (var v in _model.VectorProperties) PgSql.Distance(v.DistanceFunction, v.ModelName);   // refuse an unsupported one now
        _table = $"{PgSql.Quote(options.Schema)}.{PgSql.Quote(Name)}";
        _metadata = new VectorStoreCollectionMetadata { VectorStoreSystemName = "postgresql", CollectionName = name };
    }

    public override string Name { get; }

    public override async Task<bool> CollectionExistsAsync(CancellationToken cancellationToken = default)
    {
        await using var connection = await PgSql.OpenAsync(_dataSource, cancellationToken).ConfigureAwait(false);
        await using var command = new NpgsqlCommand("SELECT to_regclass(@t) IS NOT NULL", connection);
        command.Parameters.AddWithValue("t", _table);
        return (bool)(await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
    }

    public override async Task EnsureCollectionExistsAsync(CancellationToken cancellationToken = default)
    {
        await using var connection = await PgSql.OpenAsync(_dataSource, cancellationToken).ConfigureAwait(false);
        var columns = new List<string> { $"{PgSql.Quote(_model.KeyProperty.StorageName)} {PgVectorModelBuilder.ColumnType(_model.KeyProperty.Type)} PRIMARY KEY" };
        columns.AddRange(_model.DataProperties.Select(p => $"{PgSql.Quote(p.StorageName)} {PgVectorModelBuilder.ColumnType(p.Type)}"));
        columns.AddRange(_model.VectorProperties.Select(p => $"{PgSql.Quote(p.StorageName)} vector({p.Dimensions})"));
        await Execute(connection, $"CREATE SCHEMA IF NOT EXISTS {PgSql.Quote(_options.Schema)}", cancellationToken).ConfigureAwait(false);
        await Execute(connection, $"CREATE TABLE IF NOT EXISTS {_table} ({string.Join(", ", columns)})", cancellationToken).ConfigureAwait(false);

        // Migration: what the table has against what the record model needs.
        var existing = new Dictionary<string, string>(StringComparer.Ordinal);
        await using (var command = new NpgsqlCommand("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(@t) AND attnum > 0 AND NOT attisdropped", connection))
        {
            command.Parameters.AddWithValue("t", _table);
            await using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false)) existing[reader.GetString(0)] = reader.GetString(1);
        }
        foreach (var p in _model.VectorProperties)
        {
            var wanted = $"vector({p.Dimensions})";
            if (!existing.TryGetValue(p.StorageName, out var type))
                await Execute(connection, $"ALTER TABLE {_table} ADD COLUMN {PgSql.Quote(p.StorageName)} {wanted}", cancellationToken).ConfigureAwait(false);
            else if (type != wanted)
                throw new VectorStoreException($"Collection '{Name}': column '{p.StorageName}' of {PgSql.Target(_dataSource)} is {type}, but vector property '{p.ModelName}' has {p.Dimensions} dimensions (an embedder of another size?). Use a new collection or delete this one.");
        }
        foreach (var p in _model.DataProperties.Where(p => !existing.ContainsKey(p.StorageName)))
            await Execute(connection, $"ALTER TABLE {_table} ADD COLUMN {PgSql.Quote(p.StorageName)} {PgVectorModelBuilder.ColumnType(p.Type)}", cancellationToken).ConfigureAwait(false);
        await CreateHnswIndexes(connection, cancellationToken).ConfigureAwait(false);
        foreach (var p in _model.DataProperties.Where(p => p.IsIndexed))
            await Execute(connection, $"CREATE INDEX IF NOT EXISTS {PgSql.Quote(IndexName(p.StorageName, "idx"))} ON {_table} ({PgSql.Quote(p.StorageName)})", cancellationToken).ConfigureAwait(false);
    }

    private IEnumerable<VectorPropertyModel> HnswProperties()
    {
        foreach (var p in _model.VectorProperties.Where(p => (p.IndexKind ?? IndexKind.Hnsw) != IndexKind.Flat))
        {
            if ((p.IndexKind ?? IndexKind.Hnsw) != IndexKind.Hnsw)
                throw new NotSupportedException($"Index kind '{p.IndexKind}' of vector property '{p.ModelName}'; pgvector here builds {IndexKind.Hnsw} or none ({IndexKind.Flat}: exact search).");
            yield return p;
        }
    }

    private async Task CreateHnswIndexes(NpgsqlConnection connection, CancellationToken cancellationToken, bool untimed = false)
    {
        foreach (var p in HnswProperties())
        {
            var (_, opClass, _, _) = PgSql.Distance(p.DistanceFunction, p.ModelName);
            await Execute(connection, $"CREATE INDEX IF NOT EXISTS {PgSql.Quote(IndexName(p.StorageName, "hnsw"))} ON {_table} USING hnsw ({PgSql.Quote(p.StorageName)} {opClass}) " +
                $"WITH (m = {_options.HnswM}, ef_construction = {_options.HnswEfConstruction})", cancellationToken, untimed).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Fills an empty collection the way pgvector advises for a first load: the HNSW indexes are dropped, the records
    /// streamed in by binary <c>COPY</c>, and each index built once over all of them (with
    /// <see cref="PgVectorStoreOptions.IndexBuildMemoryMegabytes"/> of <c>maintenance_work_mem</c>, so the graph is built
    /// in memory), all in one transaction: a failure leaves the collection empty with its indexes. Creates the collection
    /// when it does not exist. Much faster than <see cref="UpsertAsync(IEnumerable{TRecord}, CancellationToken)"/>, which
    /// maintains the index row by row; use that one to add to a collection that holds records.
    /// </summary>
    /// <returns>The number of records loaded.</returns>
    /// <exception cref="InvalidOperationException">The collection already holds records.</exception>
    public async Task<long> BulkLoadAsync(IEnumerable<TRecord> records, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(records);
        await EnsureCollectionExistsAsync(cancellationToken).ConfigureAwait(false);
        await using var connection = await PgSql.OpenAsync(_dataSource, cancellationToken).ConfigureAwait(false);
        await using var transaction = await connection.BeginTransactionAsync(cancellationToken).ConfigureAwait(false);
        await using (var any = new NpgsqlCommand($"SELECT EXISTS (SELECT 1 FROM {_table})", connection))
            if ((bool)(await any.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!)
                throw new InvalidOperationException($"Collection '{Name}' in {PgSql.Target(_dataSource)} already holds records; BulkLoadAsync fills an empty collection (UpsertAsync adds to one).");
        foreach (var p in HnswProperties())
            await Execute(connection, $"DROP INDEX IF EXISTS {PgSql.Quote(_options.Schema)}.{PgSql.Quote(IndexName(p.StorageName, "hnsw"))}", cancellationToken).ConfigureAwait(false);

        var keyType = PgVectorModelBuilder.ColumnType(_model.KeyProperty.Type);
        var dataTypes = _model.DataProperties.Select(p => PgVectorModelBuilder.ColumnType(p.Type)).ToList();
        long count = 0;
        await using (var writer = await connection.BeginBinaryImportAsync($"COPY {_table} ({SelectList(includeVectors: true)}) FROM STDIN (FORMAT BINARY)", cancellationToken).ConfigureAwait(false))
        {
            writer.Timeout = TimeSpan.Zero;
            // In chunks, so vectors generated from text need not all be held at once.
            foreach (var chunk in records.Chunk(4096))
            {
                var (list, vectors) = await VectorInputs.UpsertInputsAsync(_model, chunk, PgVectorModelBuilder.IsNativeVectorType, cancellationToken).ConfigureAwait(false);
                for (int i = 0; i < list.Count; i++)
                {
                    await writer.StartRowAsync(cancellationToken).ConfigureAwait(false);
                    await writer.WriteAsync(VectorInputs.KeyOf(_model, list[i]), keyType, cancellationToken).ConfigureAwait(false);
                    for (int d = 0; d < dataTypes.Count; d++)
                    {
                        if (_model.DataProperties[d].GetValueAsObject(list[i]) is { } value) await writer.WriteAsync(value, dataTypes[d], cancellationToken).ConfigureAwait(false);
                        else await writer.WriteNullAsync(cancellationToken).ConfigureAwait(false);
                    }
                    for (int v = 0; v < vectors.Length; v++)
                    {
                        if (vectors[v][i] is { } vector) await writer.WriteAsync(new Pgvector.Vector(vector), "vector", cancellationToken).ConfigureAwait(false);
                        else await writer.WriteNullAsync(cancellationToken).ConfigureAwait(false);
                    }
                }
                count += list.Count;
            }
            await writer.CompleteAsync(cancellationToken).ConfigureAwait(false);
        }
        await Execute(connection, $"SET LOCAL maintenance_work_mem = '{_options.IndexBuildMemoryMegabytes}MB'", cancellationToken).ConfigureAwait(false);
        await CreateHnswIndexes(connection, cancellationToken, untimed: true).ConfigureAwait(false);
        await transaction.CommitAsync(cancellationToken).ConfigureAwait(false);
        return count;
    }

    public override async Task EnsureCollectionDeletedAsync(CancellationToken cancellationToken = default)
    {
        await using var connection = await PgSql.OpenAsync(_dataSource, cancellationToken).ConfigureAwait(false);
        await Execute(connection, $"DROP TABLE IF EXISTS {_table}", cancellationToken).ConfigureAwait(false);
    }

    public override async Task<TRecord?> GetAsync(TKey key, RecordRetrievalOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(key);
        var parameters = new List<NpgsqlParameter> { new("k", key) };
        var records = await Query($"SELECT {SelectList(options?.IncludeVectors ?? false)} FROM {_table} WHERE {PgSql.Quote(_model.KeyProperty.StorageName)} = @k", parameters,
            options?.IncludeVectors ?? false, null, cancellationToken).ConfigureAwait(false);
        return records.Count == 0 ? null : records[0].Record;
    }

    public override async IAsyncEnumerable<TRecord> GetAsync(Expression<Func<TRecord, bool>> filter, int top, FilteredRecordRetrievalOptions<TRecord>? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(filter);
        ArgumentOutOfRangeException.ThrowIfLessThan(top, 1);
        options ??= new FilteredRecordRetrievalOptions<TRecord>();
        var parameters = new List<NpgsqlParameter>();
        var sql = new StringBuilder($"SELECT {SelectList(options.IncludeVectors)} FROM {_table} WHERE {PgSqlFilter.Translate(_model, filter, parameters)}");
        if (options.OrderBy?.Invoke(new FilteredRecordRetrievalOptions<TRecord>.OrderByDefinition()).Values is { Count: > 0 } order)
            sql.Append(" ORDER BY ").Append(string.Join(", ", order.Select(o => $"{PgSql.Quote(_model.GetDataOrKeyProperty(o.PropertySelector).StorageName)} {(o.Ascending ? "ASC" : "DESC")}")));
        sql.Append($" LIMIT {top} OFFSET {options.Skip}");
        foreach (var (record, _) in await Query(sql.ToString(), parameters, options.IncludeVectors, null, cancellationToken).ConfigureAwait(false)) yield return record;
    }

    public override async Task DeleteAsync(TKey key, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(key);
        await using var connection = await PgSql.OpenAsync(_dataSource, cancellationToken).ConfigureAwait(false);
        await using var command = new NpgsqlCommand($"DELETE FROM {_table} WHERE {PgSql.Quote(_model.KeyProperty.StorageName)} = @k", connection);
        command.Parameters.AddWithValue("k", key);
        await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
    }

    public override Task UpsertAsync(TRecord record, CancellationToken cancellationToken = default) => UpsertAsync([record], cancellationToken);

    public override async Task UpsertAsync(IEnumerable<TRecord> records, CancellationToken cancellationToken = default)
    {
        var (list, vectors) = await VectorInputs.UpsertInputsAsync(_model, records, PgVectorModelBuilder.IsNativeVectorType, cancellationToken).ConfigureAwait(false);
        if (list.Count == 0) return;
        var columns = new List<PropertyModel> { _model.KeyProperty };
        columns.AddRange(_model.DataProperties);
        columns.AddRange(_model.VectorProperties);
        var names = string.Join(", ", columns.Select(c => PgSql.Quote(c.StorageName)));
        var updates = columns.Skip(1).Select(c => $"{PgSql.Quote(c.StorageName)} = EXCLUDED.{PgSql.Quote(c.StorageName)}").ToList();
        var conflict = updates.Count == 0 ? "DO NOTHING" : "DO UPDATE SET " + string.Join(", ", updates);
        var sql = $"INSERT INTO {_table} ({names}) VALUES ({string.Join(", ", columns.Select((_, i) => $"${i + 1}"))}) ON CONFLICT ({PgSql.Quote(_model.KeyProperty.StorageName)}) {conflict}";
        await using var connection = await PgSql.OpenAsync(_dataSource, cancellationToken).ConfigureAwait(false);
        await using var transaction = await connection.BeginTransactionAsync(cancellationToken).ConfigureAwait(false);
        await using var batch = new NpgsqlBatch(connection, transaction);
        for (int i = 0; i < list.Count; i++)
        {
            var command = new NpgsqlBatchCommand(sql);
            command.Parameters.Add(new NpgsqlParameter { Value = VectorInputs.KeyOf(_model, list[i]) });
            foreach (var p in _model.DataProperties) command.Parameters.Add(new NpgsqlParameter { Value = p.GetValueAsObject(list[i]) ?? DBNull.Value });
            for (int c = 0; c < _model.VectorProperties.Count; c++)
                command.Parameters.Add(new NpgsqlParameter { Value = vectors[c][i] is { } v ? new Pgvector.Vector(v) : DBNull.Value });
            batch.BatchCommands.Add(command);
        }
        await batch.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        await transaction.CommitAsync(cancellationToken).ConfigureAwait(false);
    }

    public override async IAsyncEnumerable<VectorSearchResult<TRecord>> SearchAsync<TInput>(TInput searchValue, int top, VectorSearchOptions<TRecord>? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(searchValue);
        ArgumentOutOfRangeException.ThrowIfLessThan(top, 1);
        options ??= new VectorSearchOptions<TRecord>();
        ArgumentOutOfRangeException.ThrowIfNegative(options.Skip);
        var property = _model.GetVectorPropertyOrSingle(options);
        if (options.IncludeVectors && !PgVectorModelBuilder.IsNativeVectorType(property.Type))
            throw new NotSupportedException($"IncludeVectors: vector property '{property.ModelName}' is generated from its input; the record holds the input, not the vector.");
        var query = await VectorInputs.QueryVectorAsync(property, searchValue, cancellationToken).ConfigureAwait(false);
        var (op, _, score, higherIsBetter) = PgSql.Distance(property.DistanceFunction, property.ModelName);
        var column = PgSql.Quote(property.StorageName);
        var parameters = new List<NpgsqlParameter> { new("q", new Pgvector.Vector(query)) };
        var where = $"{column} IS NOT NULL";
        if (options.Filter is { } filter) where += " AND " + PgSqlFilter.Translate(_model, filter, parameters);
        var sql = $"SELECT {SelectList(options.IncludeVectors)}, {column} {op} @q FROM {_table} WHERE {where} ORDER BY {column} {op} @q LIMIT {top} OFFSET {options.Skip}";
        // A filter removes rows after the index scan; iterative scans keep scanning until enough rows pass it.
        var settings = new List<string>();
        if (_options.EfSearch is { } ef) settings.Add($"SET LOCAL hnsw.ef_search = {ef}");
        if (options.Filter is not null) settings.Add("SET LOCAL hnsw.iterative_scan = strict_order");
        foreach (var (record, distance) in await Query(sql, parameters, options.IncludeVectors, settings, cancellationToken).ConfigureAwait(false))
        {
            double s = score(distance!.Value);
            if (options.ScoreThreshold is { } t && (higherIsBetter ? s < t : s > t)) continue;
            yield return new VectorSearchResult<TRecord>(record, s);
        }
    }

    public override object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(VectorStoreCollectionMetadata)) return _metadata;
        if (serviceType == typeof(NpgsqlDataSource)) return _dataSource;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    private string IndexName(string column, string kind)
    {
        var name = $"{Name}_{column}_{kind}";
        // PostgreSQL cuts identifiers at 63 bytes; a hash keeps two long names apart.
        return name.Length <= 63 ? name : $"{name[..50]}_{(uint)StringComparer.Ordinal.GetHashCode(name):x8}";
    }

    private string SelectList(bool includeVectors)
    {
        var columns = new List<PropertyModel> { _model.KeyProperty };
        columns.AddRange(_model.DataProperties);
        if (includeVectors) columns.AddRange(_model.VectorProperties);
        return string.Join(", ", columns.Select(c => PgSql.Quote(c.StorageName)));
    }

    /// <summary>Runs a query whose columns are the select list (plus a distance last when asked for) and builds records from its rows.</summary>
    private async Task<List<(TRecord Record, double? Distance)>> Query(string sql, List<NpgsqlParameter> parameters, bool includeVectors, List<string>? settings, CancellationToken cancellationToken)
    {
        await using var connection = await PgSql.OpenAsync(_dataSource, cancellationToken).ConfigureAwait(false);
        await using var transaction = settings is { Count: > 0 } ? await connection.BeginTransactionAsync(cancellationToken).ConfigureAwait(false) : null;
        foreach (var setting in settings ?? []) await Execute(connection, setting, cancellationToken).ConfigureAwait(false);
        await using var command = new NpgsqlCommand(sql, connection);
        command.Parameters.AddRange(parameters.ToArray());
        var results = new List<(TRecord, double?)>();
        NpgsqlDataReader reader;
        try
        {
            reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UndefinedTable)
        {
            throw new VectorStoreException($"Collection '{Name}' does not exist in {PgSql.Target(_dataSource)}; call EnsureCollectionExistsAsync first.", e);
        }
        await using (reader)
        {
            var selected = new List<PropertyModel> { _model.KeyProperty };
            selected.AddRange(_model.DataProperties);
            if (includeVectors) selected.AddRange(_model.VectorProperties);
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                var record = _model.CreateRecord<TRecord>()!;
                for (int i = 0; i < selected.Count; i++)
                {
                    if (reader.IsDBNull(i)) continue;
                    var p = selected[i];
                    object value = p is VectorPropertyModel
                        ? VectorInputs.AsPropertyValue(Nullable.GetUnderlyingType(p.Type) ?? p.Type, reader.GetFieldValue<Pgvector.Vector>(i).ToArray())
                        : Read(reader, i, Nullable.GetUnderlyingType(p.Type) ?? p.Type);
                    p.SetValueAsObject(record, value);
                }
                results.Add((record, reader.FieldCount > selected.Count ? reader.GetDouble(selected.Count) : null));
            }
        }
        if (transaction is not null) await transaction.CommitAsync(cancellationToken).ConfigureAwait(false);
        return results;
    }

    private static object Read(NpgsqlDataReader reader, int i, Type type) =>
        type == typeof(DateTimeOffset) ? reader.GetFieldValue<DateTimeOffset>(i)
        : type == typeof(string[]) ? reader.GetFieldValue<string[]>(i)
        : Convert.ChangeType(reader.GetValue(i), type, System.Globalization.CultureInfo.InvariantCulture);

    private static async Task Execute(NpgsqlConnection connection, string sql, CancellationToken cancellationToken, bool untimed = false)
    {
        // An index build over many rows runs for minutes: no command timeout there, the token still cancels it.
        await using var command = new NpgsqlCommand(sql, connection) { CommandTimeout = untimed ? 0 : connection.CommandTimeout };
        await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
    }
}
