using Microsoft.ML;

namespace MLNetPeft.Hosting.Models;

/// <summary>
/// One transformer of a model in use: the transformer, and the lease that keeps its version alive (none for a
/// transformer the caller owns). Dispose it when the request is done.
/// </summary>
public readonly struct ModelUse<T>(T value, IDisposable? lease) : IDisposable where T : class, ITransformer
{
    /// <summary>The transformer.</summary>
    public T Value { get; } = value;

    public void Dispose() => lease?.Dispose();
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
