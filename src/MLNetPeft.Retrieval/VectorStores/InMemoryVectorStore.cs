using System.Collections.Concurrent;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.VectorData;

namespace MLNetPeft.Retrieval.VectorStores;

/// <summary>
/// The embedded default store: collections held in memory with exact search (<see cref="InMemoryVectorCollection{TKey, TRecord}"/>),
/// each saved to and loaded from a file of its own. A collection name is bound to one record type while it exists.
/// </summary>
public sealed class InMemoryVectorStore(IEmbeddingGenerator? embeddingGenerator = null) : VectorStore
{
    private readonly ConcurrentDictionary<string, (Type Key, Type Record, IInMemoryCollection Collection)> _collections = new(StringComparer.Ordinal);
    private readonly VectorStoreMetadata _metadata = new() { VectorStoreSystemName = "mlnetpeft.inmemory" };

    public override VectorStoreCollection<TKey, TRecord> GetCollection<TKey, TRecord>(string name, VectorStoreCollectionDefinition? definition = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        var entry = _collections.GetOrAdd(name, _ => (typeof(TKey), typeof(TRecord), new InMemoryVectorCollection<TKey, TRecord>(name, definition, embeddingGenerator)));
        if (entry.Collection is not InMemoryVectorCollection<TKey, TRecord> collection)
            throw new InvalidOperationException($"Collection '{name}' holds {entry.Record.Name} records with {entry.Key.Name} keys, not {typeof(TRecord).Name} with {typeof(TKey).Name}.");
        return collection;
    }

    public override VectorStoreCollection<object, Dictionary<string, object?>> GetDynamicCollection(string name, VectorStoreCollectionDefinition definition) =>
        GetCollection<object, Dictionary<string, object?>>(name, definition ?? throw new ArgumentNullException(nameof(definition)));

    public override IAsyncEnumerable<string> ListCollectionNamesAsync(CancellationToken cancellationToken = default) =>
        _collections.Where(c => c.Value.Collection.Exists).Select(c => c.Key).Order(StringComparer.Ordinal).ToList().ToAsyncEnumerable();

    public override Task<bool> CollectionExistsAsync(string name, CancellationToken cancellationToken = default) =>
        Task.FromResult(_collections.TryGetValue(name, out var entry) && entry.Collection.Exists);

    public override Task EnsureCollectionDeletedAsync(string name, CancellationToken cancellationToken = default)
    {
        if (_collections.TryRemove(name, out var entry))
        {
            entry.Collection.Delete();
            entry.Collection.Dispose();
        }
        return Task.CompletedTask;
    }

    public override object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(VectorStoreMetadata)) return _metadata;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
            foreach (var entry in _collections.Values) entry.Collection.Dispose();
        _collections.Clear();
        base.Dispose(disposing);
    }
}
