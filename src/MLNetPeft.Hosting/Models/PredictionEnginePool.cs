using System.Collections.Concurrent;
using Microsoft.Extensions.ObjectPool;
using Microsoft.ML;

namespace MLNetPeft.Hosting.Models;

/// <summary>
/// Prediction engines over the registered models, pooled as ML.NET's own <c>PredictionEnginePool</c> pools them: a
/// <see cref="PredictionEngine{TSrc,TDst}"/> keeps per-call buffers and serves one thread at a time, while creating one
/// per request would rebuild its mappers each time. Engines belong to one version of a model: an engine rented before a
/// reload keeps its version alive until it is returned, and is then disposed instead of pooled.
/// </summary>
public sealed class PredictionEnginePool<TData, TPrediction>(ModelRegistry registry)
    where TData : class
    where TPrediction : class, new()
{
    // The lease each rented engine holds on its model version, so that a reload cannot dispose it mid-call.
    private readonly ConcurrentDictionary<PredictionEngine<TData, TPrediction>, ModelLease> _rented = new(ReferenceEqualityComparer.Instance);

    /// <summary>An engine over the current version of <paramref name="modelName"/>; give it back with <see cref="ReturnPredictionEngine"/>.</summary>
    /// <exception cref="KeyNotFoundException">No model of that name is registered.</exception>
    public PredictionEngine<TData, TPrediction> GetPredictionEngine(string modelName)
    {
        var lease = registry.Acquire(modelName);
        try
        {
            var engine = PoolOf(lease.Model).Get();
            _rented[engine] = lease;
            return engine;
        }
        catch
        {
            lease.Dispose();
            throw;
        }
    }

    /// <summary>Returns an engine rented from <see cref="GetPredictionEngine"/> (to its version's pool, or disposes it if that version was replaced).</summary>
    public void ReturnPredictionEngine(string modelName, PredictionEngine<TData, TPrediction> engine)
    {
        ArgumentNullException.ThrowIfNull(engine);
        if (!_rented.TryGetValue(engine, out var lease))
            throw new ArgumentException($"This prediction engine was not rented from the pool of model '{modelName}' (or was returned already).", nameof(engine));
        if (!string.Equals(lease.Model.Name, modelName, StringComparison.OrdinalIgnoreCase))
            throw new ArgumentException($"This prediction engine belongs to model '{lease.Model.Name}', not '{modelName}'.", nameof(modelName));
        if (!_rented.TryRemove(engine, out _)) return; // another thread returned it at the same moment
        try { PoolOf(lease.Model).Return(engine); }
        finally { lease.Dispose(); }
    }

    /// <summary>Runs one prediction on <paramref name="modelName"/> with a pooled engine.</summary>
    public TPrediction Predict(string modelName, TData example)
    {
        var engine = GetPredictionEngine(modelName);
        try { return engine.Predict(example); }
        finally { ReturnPredictionEngine(modelName, engine); }
    }

    private static ObjectPool<PredictionEngine<TData, TPrediction>> PoolOf(LoadedModel model) =>
        model.GetOrAdd((typeof(TData), typeof(TPrediction)), () =>
            new DefaultObjectPoolProvider { MaximumRetained = model.MaxPooledEngines }.Create(new EnginePolicy(model)));

    /// <summary>Creates engines of one model version with its saved input schema (so vector sizes match the training data).</summary>
    private sealed class EnginePolicy(LoadedModel model) : IPooledObjectPolicy<PredictionEngine<TData, TPrediction>>
    {
        public PredictionEngine<TData, TPrediction> Create() =>
            model.MLContext.Model.CreatePredictionEngine<TData, TPrediction>(model.Transformer, model.InputSchema);

        // A retired version's pool is disposed with its model; engines coming back to it are then disposed by the pool.
        public bool Return(PredictionEngine<TData, TPrediction> obj) => true;
    }
}
