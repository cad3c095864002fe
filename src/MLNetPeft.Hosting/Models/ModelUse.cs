using Microsoft.ML;

namespace MLNetPeft.Hosting.Models;

/// <summary>
/// One transformer of a model in use: the transformer, and the lease that keeps its version alive (none for a
/// transformer the caller owns). Dispose it when the request is done.
/// </summary>
public readonly struct ModelUse<T> : IDisposable where T : class, ITransformer
{
    private readonly ModelLease? _lease;
    private readonly Dictionary<Type, object>? _ownShared;

    /// <summary>A transformer the caller owns: shared objects live in <paramref name="shared"/> (the caller's to dispose).</summary>
    public ModelUse(T value, Dictionary<Type, object> shared)
    {
        Value = value;
        _ownShared = shared;
    }

    internal ModelUse(T value, ModelLease lease)
    {
        Value = value;
        _lease = lease;
    }

    /// <summary>The transformer.</summary>
    public T Value { get; }

    /// <summary>
    /// The <typeparamref name="TValue"/> shared by every user of this model version (created by <paramref name="create"/>
    /// the first time, disposed with the version when it is replaced), such as the batcher its requests share.
    /// </summary>
    public TValue GetOrAddShared<TValue>(Func<T, TValue> create) where TValue : class
    {
        var value = Value;
        if (_lease is not null) return _lease.Model.GetOrAdd((typeof(TValue), typeof(T)), () => create(value));
        var shared = _ownShared ?? throw new InvalidOperationException("This ModelUse was default-constructed.");
        lock (shared)
        {
            if (!shared.TryGetValue(typeof(TValue), out var existing)) shared[typeof(TValue)] = existing = create(value);
            return (TValue)existing;
        }
    }

    public void Dispose() => _lease?.Dispose();
}

public static class ModelRegistryExtensions
{
    /// <summary>
    /// Leases the current version of <paramref name="modelName"/> and finds its <typeparamref name="T"/> (the model itself
    /// or a step of its chain).
    /// </summary>
    /// <param name="purpose">What the model is needed for, for the message when it holds no <typeparamref name="T"/>.</param>
    /// <exception cref="InvalidOperationException">The model holds no transformer of that type (names the model and its file).</exception>
    public static ModelUse<T> Use<T>(this ModelRegistry registry, string modelName, string purpose) where T : class, ITransformer
    {
        ArgumentNullException.ThrowIfNull(registry);
        var lease = registry.Acquire(modelName);
        if (lease.Model.Find<T>() is { } found) return new ModelUse<T>(found, lease);
        string actual = lease.Model.Transformer.GetType().Name;
        lease.Dispose();
        throw new InvalidOperationException(
            $"Model '{modelName}' ({registry.GetRegistration(modelName).Path}) holds no {typeof(T).Name}, which is needed to {purpose}; " +
            $"it is a {actual}.");
    }
}
