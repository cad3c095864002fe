using System.Linq.Expressions;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.VectorData;
using Microsoft.Extensions.VectorData.ProviderServices;
using MLNetPeft.Checkpoints;
using MLNetPeft.Retrieval.Evaluation;
using MLNetPeft.Retrieval.Lexical;
using MLNetPeft.Runtime;
using static TorchSharp.torch;

namespace MLNetPeft.Retrieval.VectorStores;

/// <summary>
/// A collection held in memory behind VectorData's <see cref="VectorStoreCollection{TKey, TRecord}"/> contract, with
/// exact search: each vector property is one float32 matrix [records, dimensions] and a batch of queries is scored
/// against it in one matrix product (<see cref="SearchBatchAsync"/>). Distance functions: cosine similarity (the
/// default), cosine distance, dot-product similarity and Euclidean distance. Filters are LINQ expressions over the
/// records, applied before scoring. <see cref="Save"/> writes the records (as JSON) and the matrices to one
/// safetensors file atomically; <see cref="Load"/> reads it back without running any code from it. String data
/// properties marked <c>IsFullTextIndexed</c> are also indexed with BM25 (Lucene, <see cref="Bm25Index"/>), and
/// <see cref="HybridSearchAsync"/> fuses that ranking with the vector search by reciprocal rank (k = 60), VectorData's
/// <see cref="IKeywordHybridSearchable{TRecord}"/> contract.
/// </summary>
public sealed class InMemoryVectorCollection<TKey, TRecord> : VectorStoreCollection<TKey, TRecord>, IKeywordHybridSearchable<TRecord>, IInMemoryCollection
    where TKey : notnull
    where TRecord : class
{
    internal const string FormatName = "mlnetpeft-vector-collection";
    private const string RecordsTensor = "records.json";
    private const int InitialCapacity = 64;

    private readonly CollectionModel _model;
    private readonly VectorStoreCollectionMetadata _metadata;
    private readonly object _gate = new();
    private readonly Dictionary<object, int> _rowOf = [];
    private readonly List<TRecord> _records = [];
    private readonly List<object> _keys = [];
    private readonly VectorColumn[] _columns;
    // BM25 per full-text-indexed property, its documents named by the key's text.
    private readonly Dictionary<DataPropertyModel, Bm25Index> _fullText = [];
    private readonly Dictionary<string, object> _keyOfText = new(StringComparer.Ordinal);
    private bool _exists;
    private bool _disposed;

    /// <param name="name">The collection's name.</param>
    /// <param name="definition">The record layout when it is not given by attributes on <typeparamref name="TRecord"/> (required for dynamic records, <c>Dictionary&lt;string, object?&gt;</c>).</param>
    /// <param name="embeddingGenerator">Turns text (or another input) into vectors for properties that are not vectors themselves, and for searches by text.</param>
    public InMemoryVectorCollection(string name, VectorStoreCollectionDefinition? definition = null, IEmbeddingGenerator? embeddingGenerator = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        Name = name;
        var builder = new InMemoryModelBuilder();
        _model = typeof(TRecord) == typeof(Dictionary<string, object?>)
            ? builder.BuildDynamic(definition ?? throw new ArgumentException("A collection of Dictionary<string, object?> records needs a VectorStoreCollectionDefinition.", nameof(definition)), embeddingGenerator)
            : builder.Build(typeof(TRecord), typeof(TKey), definition, embeddingGenerator);
        if (_model.KeyProperty.Type != typeof(TKey) && Nullable.GetUnderlyingType(_model.KeyProperty.Type) != typeof(TKey))
            throw new ArgumentException($"The key property '{_model.KeyProperty.ModelName}' is {_model.KeyProperty.Type.Name}, but the collection's key type is {typeof(TKey).Name}.", nameof(TKey));
        _columns = _model.VectorProperties.Select(p => new VectorColumn(p)).ToArray();
        foreach (var p in _model.DataProperties.Where(p => p.IsFullTextIndexed))
        {
            if (p.Type != typeof(string))
                throw new NotSupportedException($"Data property '{p.ModelName}' is marked IsFullTextIndexed but is {p.Type.Name}; full-text indexing here takes string properties.");
            _fullText[p] = Bm25Index.InMemory();
        }
        _metadata = new VectorStoreCollectionMetadata { VectorStoreSystemName = "mlnetpeft.inmemory", CollectionName = name };
    }

    public override string Name { get; }

    /// <summary>Records in the collection.</summary>
    public int Count { get { lock (_gate) return _records.Count; } }

    public override Task<bool> CollectionExistsAsync(CancellationToken cancellationToken = default) => Task.FromResult(_exists);

    bool IInMemoryCollection.Exists => _exists;

    void IInMemoryCollection.Delete() => EnsureCollectionDeletedAsync().GetAwaiter().GetResult();

    public override Task EnsureCollectionExistsAsync(CancellationToken cancellationToken = default)
    {
        _exists = true;
        return Task.CompletedTask;
    }

    public override Task EnsureCollectionDeletedAsync(CancellationToken cancellationToken = default)
    {
        lock (_gate)
        {
            _exists = false;
            _rowOf.Clear();
            _records.Clear();
            _keys.Clear();
            foreach (var c in _columns) c.Clear();
            ClearFullText();
        }
        return Task.CompletedTask;
    }

    public override Task<TRecord?> GetAsync(TKey key, RecordRetrievalOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(key);
        lock (_gate)
        {
            RequireExists();
            return Task.FromResult(_rowOf.TryGetValue(key, out var row) ? _records[row] : null);
        }
    }

    public override IAsyncEnumerable<TRecord> GetAsync(Expression<Func<TRecord, bool>> filter, int top, FilteredRecordRetrievalOptions<TRecord>? options = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(filter);
        ArgumentOutOfRangeException.ThrowIfLessThan(top, 1);
        options ??= new FilteredRecordRetrievalOptions<TRecord>();
        List<TRecord> snapshot;
        lock (_gate)
        {
            RequireExists();
            snapshot = [.. _records];
        }
        var records = snapshot.AsQueryable().Where(filter);
        if (options.OrderBy?.Invoke(new FilteredRecordRetrievalOptions<TRecord>.OrderByDefinition()).Values is { Count: > 0 } order)
        {
            var sorted = order[0].Ascending ? records.OrderBy(order[0].PropertySelector) : records.OrderByDescending(order[0].PropertySelector);
            foreach (var next in order.Skip(1)) sorted = next.Ascending ? sorted.ThenBy(next.PropertySelector) : sorted.ThenByDescending(next.PropertySelector);
            records = sorted;
        }
        return records.Skip(options.Skip).Take(top).ToList().ToAsyncEnumerable();
    }

    public override Task DeleteAsync(TKey key, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(key);
        lock (_gate)
        {
            RequireExists();
            if (!_rowOf.Remove(key, out var row)) return Task.CompletedTask;
            // The last row moves into the freed one, so the matrices stay dense.
            int last = _records.Count - 1;
            if (row != last)
            {
                _records[row] = _records[last];
                _keys[row] = _keys[last];
                _rowOf[_keys[row]] = row;
            }
            _records.RemoveAt(last);
            _keys.RemoveAt(last);
            foreach (var c in _columns) c.MoveRow(last, row);
            if (_fullText.Count > 0)
            {
                var text = KeyText(key);
                _keyOfText.Remove(text);
                foreach (var index in _fullText.Values) index.Delete([text]);
            }
        }
        return Task.CompletedTask;
    }

    public override Task UpsertAsync(TRecord record, CancellationToken cancellationToken = default) => UpsertAsync([record], cancellationToken);

    public override async Task UpsertAsync(IEnumerable<TRecord> records, CancellationToken cancellationToken = default)
    {
        var (list, vectors) = await VectorInputs.UpsertInputsAsync(_model, records, InMemoryModelBuilder.IsNativeVectorType, cancellationToken).ConfigureAwait(false);
        if (list.Count == 0) return;
        lock (_gate)
        {
            RequireExists();
            for (int i = 0; i < list.Count; i++)
            {
                var record = list[i];
                var key = VectorInputs.KeyOf(_model, record);
                if (!_rowOf.TryGetValue(key, out var row))
                {
                    row = _records.Count;
                    _rowOf[key] = row;
                    _records.Add(record);
                    _keys.Add(key);
                }
                else _records[row] = record;
                for (int c = 0; c < _columns.Length; c++) _columns[c].Set(row, vectors[c][i]);
            }
            IndexFullText(list);
        }
    }

    public override async IAsyncEnumerable<VectorSearchResult<TRecord>> SearchAsync<TInput>(TInput searchValue, int top, VectorSearchOptions<TRecord>? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(searchValue);
        options ??= new VectorSearchOptions<TRecord>();
        var property = _model.GetVectorPropertyOrSingle(options);
        var query = await VectorInputs.QueryVectorAsync(property, searchValue, cancellationToken).ConfigureAwait(false);
        var results = Search(property, [query], top, options.Filter, options.Skip, options.ScoreThreshold, options.IncludeVectors)[0];
        foreach (var r in results) yield return r;
    }

    /// <summary>
    /// The top <paramref name="top"/> records for each query vector, scored against the whole collection in one matrix
    /// product (exact search), best first; the filter and score threshold apply as in <see cref="SearchAsync{TInput}"/>.
    /// </summary>
    public Task<IReadOnlyList<IReadOnlyList<VectorSearchResult<TRecord>>>> SearchBatchAsync(IReadOnlyList<ReadOnlyMemory<float>> queries, int top,
        VectorSearchOptions<TRecord>? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(queries);
        options ??= new VectorSearchOptions<TRecord>();
        var property = _model.GetVectorPropertyOrSingle(options);
        return Task.FromResult(Search(property, queries, top, options.Filter, options.Skip, options.ScoreThreshold, options.IncludeVectors));
    }

    public override object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(VectorStoreCollectionMetadata)) return _metadata;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Writes the records and their vectors to <paramref name="path"/> (a safetensors file, written under a temporary name and renamed).</summary>
    public void Save(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        lock (_gate)
        {
            RequireExists();
            var rows = new JsonArray();
            foreach (var record in _records)
            {
                var row = new JsonObject();
                foreach (var p in _model.KeyProperties.Concat<PropertyModel>(_model.DataProperties))
                    row[p.ModelName] = JsonSerializer.SerializeToNode(p.GetValueAsObject(record), p.Type);
                rows.Add(row);
            }
            using var scope = NewDisposeScope();
            var tensors = new Dictionary<string, Tensor> { [RecordsTensor] = tensor(Encoding.UTF8.GetBytes(rows.ToJsonString())) };
            foreach (var c in _columns) tensors["vectors." + c.Property.ModelName] = c.Rows(_records.Count);
            SafetensorsWriter.Save(path, tensors, new Dictionary<string, string> { ["format"] = FormatName, ["collection"] = Name, ["records"] = _records.Count.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        }
    }

    /// <summary>Replaces the collection's contents with what <see cref="Save"/> wrote to <paramref name="path"/>; the file's vector properties and dimensions must be this collection's.</summary>
    /// <exception cref="InvalidDataException">The file is not a saved collection of this layout.</exception>
    public void Load(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        using var file = SafetensorsFile.Open(path);
        if (!file.Metadata.TryGetValue("format", out var format) || format != FormatName || !file.Contains(RecordsTensor))
            throw new InvalidDataException($"'{path}' is not a saved vector collection (no '{FormatName}' format entry).");
        using var scope = NewDisposeScope();
        JsonArray rows;
        try
        {
            using var bytes = file.ReadTensor(RecordsTensor);
            rows = JsonNode.Parse(bytes.data<byte>().ToArray()) as JsonArray ?? throw new InvalidDataException($"'{path}': the records are not a JSON array.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"'{path}': the records are not valid JSON ({e.Message}).", e);
        }
        var matrices = new Tensor[_columns.Length];
        for (int c = 0; c < _columns.Length; c++)
        {
            var name = "vectors." + _columns[c].Property.ModelName;
            if (!file.Contains(name)) throw new InvalidDataException($"'{path}' has no vectors for property '{_columns[c].Property.ModelName}'.");
            var shape = file.ShapeOf(name);
            if (shape.Length != 2 || shape[0] != rows.Count || shape[1] != _columns[c].Property.Dimensions || file.DTypeOf(name) != ScalarType.Float32)
                throw new InvalidDataException($"'{path}': vectors of '{_columns[c].Property.ModelName}' are {file.DTypeOf(name)} [{string.Join(", ", shape)}]; expected float32 [{rows.Count}, {_columns[c].Property.Dimensions}].");
            matrices[c] = file.ReadTensor(name);
        }
        var records = new List<TRecord>(rows.Count);
        foreach (var node in rows)
        {
            if (node is not JsonObject row) throw new InvalidDataException($"'{path}': a record is not a JSON object.");
            var record = _model.CreateRecord<TRecord>()!;
            foreach (var p in _model.KeyProperties.Concat<PropertyModel>(_model.DataProperties))
            {
                try
                {
                    p.SetValueAsObject(record, row[p.ModelName]?.Deserialize(p.Type));
                }
                catch (JsonException e)
                {
                    throw new InvalidDataException($"'{path}': property '{p.ModelName}' of a record is not a {p.Type.Name} ({e.Message}).", e);
                }
            }
            records.Add(record);
        }
        lock (_gate)
        {
            _exists = true;
            _rowOf.Clear();
            _records.Clear();
            _keys.Clear();
            for (int i = 0; i < records.Count; i++)
            {
                var key = _model.KeyProperty.GetValueAsObject(records[i]) ?? throw new InvalidDataException($"'{path}': record {i} has no key.");
                if (!_rowOf.TryAdd(key, i)) throw new InvalidDataException($"'{path}': the key '{key}' occurs twice.");
                _records.Add(records[i]);
                _keys.Add(key);
            }
            for (int c = 0; c < _columns.Length; c++) _columns[c].Replace(matrices[c], records.Count);
            ClearFullText();
            IndexFullText(records);
        }
        // Vector properties of the records themselves are filled from the matrices (not stored twice in the file).
        foreach (var (c, column) in _columns.Index())
            if (InMemoryModelBuilder.IsNativeVectorType(column.Property.Type))
                for (int i = 0; i < records.Count; i++) column.Property.SetValueAsObject(records[i], column.AsPropertyValue(i));
    }

    protected override void Dispose(bool disposing)
    {
        if (_disposed) return;
        _disposed = true;
        if (disposing)
        {
            foreach (var c in _columns) c.Dispose();
            foreach (var index in _fullText.Values) index.Dispose();
        }
        base.Dispose(disposing);
    }

    private IReadOnlyList<IReadOnlyList<VectorSearchResult<TRecord>>> Search(VectorPropertyModel property, IReadOnlyList<ReadOnlyMemory<float>> queries, int top,
        Expression<Func<TRecord, bool>>? filter, int skip, double? threshold, bool includeVectors)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(top, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(skip);
        if (includeVectors && !InMemoryModelBuilder.IsNativeVectorType(property.Type))
            throw new NotSupportedException($"IncludeVectors: vector property '{property.ModelName}' is generated from its input; the record holds the input, not the vector.");
        foreach (var q in queries) VectorInputs.CheckQuery(property, q);
        var column = _columns.Single(c => c.Property == property);
        var predicate = filter?.Compile();
        lock (_gate)
        {
            RequireExists();
            // Without a filter every row is a candidate (null: no index to gather by).
            var candidates = predicate is null ? null : Enumerable.Range(0, _records.Count).Where(i => predicate(_records[i])).ToArray();
            int available = candidates?.Length ?? _records.Count;
            var results = new List<IReadOnlyList<VectorSearchResult<TRecord>>>(queries.Count);
            if (available == 0 || queries.Count == 0)
            {
                for (int i = 0; i < queries.Count; i++) results.Add([]);
                return results;
            }
            int k = Math.Min(top + skip, available);
            var (scores, rows) = column.Top(queries, candidates, _records.Count, k);
            for (int q = 0; q < queries.Count; q++)
            {
                var hits = new List<VectorSearchResult<TRecord>>(top);
                for (int j = skip; j < k; j++)
                {
                    double score = scores[q][j];
                    if (threshold is { } t && (column.HigherIsBetter ? score < t : score > t)) continue;
                    hits.Add(new VectorSearchResult<TRecord>(_records[rows[q][j]], score));
                }
                results.Add(hits);
            }
            return results;
        }
    }

    /// <summary>
    /// Hybrid search: the vector search for <paramref name="searchValue"/> and BM25 over the full-text property for
    /// <paramref name="keywords"/>, each to a depth of at least 100, fused by reciprocal rank (k = 60, the
    /// <see cref="HybridFusion.ReciprocalRank"/> of <see cref="Retrievers.KnowledgeBase"/>); the score is the fused
    /// one. The filter applies to both rankings before fusion, Skip and ScoreThreshold to the fused list.
    /// </summary>
    /// <exception cref="InvalidOperationException">No (or more than one, without AdditionalProperty) data property is marked IsFullTextIndexed.</exception>
    public async IAsyncEnumerable<VectorSearchResult<TRecord>> HybridSearchAsync<TInput>(TInput searchValue, ICollection<string> keywords, int top,
        HybridSearchOptions<TRecord>? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
        where TInput : notnull
    {
        ArgumentNullException.ThrowIfNull(searchValue);
        ArgumentNullException.ThrowIfNull(keywords);
        ArgumentOutOfRangeException.ThrowIfLessThan(top, 1);
        options ??= new HybridSearchOptions<TRecord>();
        ArgumentOutOfRangeException.ThrowIfNegative(options.Skip);
        var vectorProperty = _model.GetVectorPropertyOrSingle(new VectorSearchOptions<TRecord> { VectorProperty = options.VectorProperty });
        var textProperty = _model.GetFullTextDataPropertyOrSingle(options.AdditionalProperty);
        var query = await VectorInputs.QueryVectorAsync(vectorProperty, searchValue, cancellationToken).ConfigureAwait(false);
        int depth = Math.Max(HybridDepth, top + options.Skip);
        var dense = Search(vectorProperty, [query], depth, options.Filter, 0, null, options.IncludeVectors)[0];
        var byText = new Dictionary<string, TRecord>(StringComparer.Ordinal);
        var denseRanking = dense.Select(r => new RankedDocument(Remember(byText, r.Record), r.Score!.Value)).ToList();
        List<RankedDocument> lexicalRanking = [];
        var words = string.Join(' ', keywords.Where(k => !string.IsNullOrWhiteSpace(k)));
        if (words.Length > 0)
        {
            var predicate = options.Filter?.Compile();
            lock (_gate)
            {
                RequireExists();
                // With a filter, BM25 ranks every record so the filtered ones still fill the depth.
                var hits = _fullText[(DataPropertyModel)textProperty].Search(words, predicate is null ? depth : Math.Max(1, _records.Count));
                foreach (var hit in hits)
                {
                    if (!_keyOfText.TryGetValue(hit.DocumentId, out var key) || !_rowOf.TryGetValue(key, out var row)) continue;
                    var record = _records[row];
                    if (predicate is not null && !predicate(record)) continue;
                    lexicalRanking.Add(new RankedDocument(Remember(byText, record), hit.Score));
                    if (lexicalRanking.Count == depth) break;
                }
            }
        }
        var fused = HybridFusion.ReciprocalRank([denseRanking, lexicalRanking], top + options.Skip);
        foreach (var r in fused.Skip(options.Skip))
        {
            if (options.ScoreThreshold is { } t && r.Score < t) continue;
            yield return new VectorSearchResult<TRecord>(byText[r.DocumentId], r.Score);
        }
    }

    private const int HybridDepth = 100;

    private string Remember(Dictionary<string, TRecord> byText, TRecord record)
    {
        var text = KeyText(_model.KeyProperty.GetValueAsObject(record)!);
        byText[text] = record;
        return text;
    }

    private static string KeyText(object key) => Convert.ToString(key, System.Globalization.CultureInfo.InvariantCulture)!;

    private void IndexFullText(IReadOnlyList<TRecord> records)
    {
        if (_fullText.Count == 0) return;
        var texts = records.Select(r => KeyText(_model.KeyProperty.GetValueAsObject(r)!)).ToList();
        for (int i = 0; i < records.Count; i++) _keyOfText[texts[i]] = _model.KeyProperty.GetValueAsObject(records[i])!;
        foreach (var (property, index) in _fullText)
            index.AddOrReplace(texts.Select((t, i) => (t, (string?)property.GetValueAsObject(records[i]) ?? "")));
    }

    private void ClearFullText()
    {
        if (_fullText.Count == 0) return;
        foreach (var index in _fullText.Values) index.Delete(_keyOfText.Keys);
        _keyOfText.Clear();
    }

    private void RequireExists()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!_exists) throw new VectorStoreException($"Collection '{Name}' does not exist; call EnsureCollectionExistsAsync first.");
    }

    /// <summary>One vector property's matrix [capacity, d] (rows beyond the count unused) and which rows hold a vector.</summary>
    private sealed class VectorColumn(VectorPropertyModel property) : IDisposable
    {
        // Long-lived: detached from whatever dispose scope the caller is in. The rows' L2 norms are kept beside them,
        // so a cosine search reads the matrix once (one product), not twice.
        private Tensor _matrix = zeros(InitialCapacity, property.Dimensions, ScalarType.Float32).DetachFromDisposeScope();
        private Tensor _norms = zeros(InitialCapacity, ScalarType.Float32).DetachFromDisposeScope();
        private bool[] _present = new bool[InitialCapacity];

        public VectorPropertyModel Property { get; } = property;

        public bool HigherIsBetter => Distance is DistanceFunction.CosineSimilarity or DistanceFunction.DotProductSimilarity;

        private string Distance => Property.DistanceFunction ?? DistanceFunction.CosineSimilarity;

        public void Set(int row, ReadOnlyMemory<float>? vector)
        {
            Grow(row + 1);
            _present[row] = vector is not null;
            using var scope = NewDisposeScope();
            var target = _matrix[row];
            if (vector is { } v) target.copy_(tensor(v.ToArray()));
            else target.zero_();
            using var norm = Scalars.Owned(vector is { } w ? Norm(w.Span) : 0.0);   // a value per row: not one for the cache
            _norms[row].fill_(norm);
        }

        // Computed the same way when a vector is set and when a file is loaded, so a loaded collection scores bit for bit alike.
        private static double Norm(ReadOnlySpan<float> v)
        {
            double sum = 0;
            foreach (var x in v) sum += (double)x * x;
            return (float)Math.Sqrt(sum);
        }

        public void MoveRow(int from, int to)
        {
            using var scope = NewDisposeScope();
            _matrix[to].copy_(_matrix[from]);
            _norms[to].copy_(_norms[from]);
            _present[to] = _present[from];
            _present[from] = false;
        }

        public void Clear()
        {
            Array.Clear(_present);
        }

        public Tensor Rows(int count) => _matrix.narrow(0, 0, count);

        public void Replace(Tensor matrix, int count)
        {
            _matrix.Dispose();
            _norms.Dispose();
            _matrix = matrix.DetachFromDisposeScope();
            if (count == 0) { _matrix.Dispose(); _matrix = zeros(InitialCapacity, Property.Dimensions, ScalarType.Float32).DetachFromDisposeScope(); }
            var values = _matrix.data<float>().ToArray();
            int d = Property.Dimensions;
            var norms = new float[_matrix.shape[0]];
            for (int r = 0; r < norms.Length; r++) norms[r] = (float)Norm(values.AsSpan(r * d, d));
            _norms = tensor(norms).DetachFromDisposeScope();
            _present = new bool[Math.Max(count, InitialCapacity)];
            Array.Fill(_present, true, 0, count);
        }

        public object AsPropertyValue(int row)
        {
            using var scope = NewDisposeScope();
            return VectorInputs.AsPropertyValue(Property.Type, _matrix[row].data<float>().ToArray());
        }

        /// <summary>Scores [queries][k] and rows [queries][k] of the k best candidates (all rows when null) per query.</summary>
        public (float[][] Scores, int[][] Rows) Top(IReadOnlyList<ReadOnlyMemory<float>> queries, int[]? candidates, int count, int k)
        {
            using var scope = NewDisposeScope();
            int d = Property.Dimensions;
            var flat = new float[queries.Count * d];
            for (int q = 0; q < queries.Count; q++) queries[q].Span.CopyTo(flat.AsSpan(q * d, d));
            var query = tensor(flat, [queries.Count, d]);
            var rows = _matrix.narrow(0, 0, count);
            var norms = _norms.narrow(0, 0, count);
            var present = tensor(_present.AsSpan(0, count).ToArray());
            if (candidates is not null)
            {
                var index = tensor(candidates.Select(c => (long)c).ToArray());
                rows = rows.index_select(0, index);
                norms = norms.index_select(0, index);
                present = present.index_select(0, index);
            }
            // One product for the whole batch; similarities are turned into the distance function's score.
            var dot = query.mm(rows.t());
            Tensor score = Distance switch
            {
                DistanceFunction.DotProductSimilarity => dot,
                DistanceFunction.CosineSimilarity => dot / Norms(query).unsqueeze(1).mul(norms.unsqueeze(0)).clamp_min(Scalars.Of(1e-12)),
                DistanceFunction.CosineDistance => (dot / Norms(query).unsqueeze(1).mul(norms.unsqueeze(0)).clamp_min(Scalars.Of(1e-12))).neg().Plus(1.0),
                DistanceFunction.EuclideanDistance => query.mul(query).sum(1, keepdim: true).Plus(norms.mul(norms).unsqueeze(0)).sub(dot.Times(2.0)).clamp_min(Scalars.Of(0.0)).sqrt(),
                _ => throw new NotSupportedException($"Distance function '{Distance}' of vector property '{Property.ModelName}'; supported: {DistanceFunction.CosineSimilarity}, {DistanceFunction.CosineDistance}, {DistanceFunction.DotProductSimilarity}, {DistanceFunction.EuclideanDistance}."),
            };
            // Rows without a vector never rank.
            var ranked = HigherIsBetter ? score : score.neg();
            ranked = ranked.masked_fill(present.logical_not().unsqueeze(0), Scalars.Of(double.NegativeInfinity));
            int available = (int)present.sum().item<long>();
            k = Math.Min(k, available);
            if (k == 0) return (Enumerable.Range(0, queries.Count).Select(_ => Array.Empty<float>()).ToArray(), Enumerable.Range(0, queries.Count).Select(_ => Array.Empty<int>()).ToArray());
            var (_, indices) = ranked.topk(k, dim: 1, largest: true, sorted: true);
            var best = score.gather(1, indices);
            var bestScores = best.data<float>().ToArray();
            var bestIndices = indices.data<long>().ToArray();
            var scores = new float[queries.Count][];
            var result = new int[queries.Count][];
            for (int q = 0; q < queries.Count; q++)
            {
                scores[q] = bestScores.AsSpan(q * k, k).ToArray();
                result[q] = bestIndices.AsSpan(q * k, k).ToArray().Select(i => candidates is null ? (int)i : candidates[i]).ToArray();
            }
            return (scores, result);
        }

        private static Tensor Norms(Tensor rows) => rows.mul(rows).sum(1).sqrt();

        private void Grow(int needed)
        {
            if (needed <= _present.Length) return;
            int capacity = Math.Max(needed, _present.Length * 2);
            var larger = zeros(capacity, Property.Dimensions, ScalarType.Float32).DetachFromDisposeScope();
            var largerNorms = zeros(capacity, ScalarType.Float32).DetachFromDisposeScope();
            using (var scope = NewDisposeScope())
            {
                larger.narrow(0, 0, _present.Length).copy_(_matrix);
                largerNorms.narrow(0, 0, _present.Length).copy_(_norms);
            }
            _matrix.Dispose();
            _norms.Dispose();
            _matrix = larger;
            _norms = largerNorms;
            Array.Resize(ref _present, capacity);
        }

        public void Dispose()
        {
            _matrix.Dispose();
            _norms.Dispose();
        }
    }
}

/// <summary>What the store needs of its collections, whatever their record type.</summary>
internal interface IInMemoryCollection : IDisposable
{
    bool Exists { get; }
    void Delete();
}
