using static TorchSharp.torch;

namespace MLNetPeft.Architectures.Layers;

/// <summary>
/// Keys and values of past positions, per layer, each [batch, kvHeads, pastLength, headDim]. A forward pass
/// with a cache attends over the cached positions plus the new ones and appends the new keys and values.
/// The cache owns its tensors (they live outside any dispose scope) until it is disposed.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly (Tensor Key, Tensor Value)?[] _layers;

    public KvCache(int layerCount) => _layers = new (Tensor, Tensor)?[layerCount];

    public int LayerCount => _layers.Length;

    /// <summary>Number of positions already cached (those of layer 0).</summary>
    public long Length => _layers[0] is { } first ? first.Key.shape[2] : 0;

    /// <summary>Appends this step's keys and values for <paramref name="layer"/> and returns all of them.</summary>
    public (Tensor Key, Tensor Value) Append(int layer, Tensor key, Tensor value)
    {
        Tensor k, v;
        if (_layers[layer] is { } past)
        {
            k = cat([past.Key, key], 2);
            v = cat([past.Value, value], 2);
            past.Key.Dispose();
            past.Value.Dispose();
        }
        else
        {
            k = key.alias();
            v = value.alias();
        }
        k.DetachFromDisposeScope();
        v.DetachFromDisposeScope();
        _layers[layer] = (k, v);
        return (k, v);
    }

    /// <summary>The cached keys and values of <paramref name="layer"/>, or null when nothing is cached.</summary>
    public (Tensor Key, Tensor Value)? this[int layer] => _layers[layer];

    /// <summary>Keeps only the batch rows in <paramref name="rows"/> (used when some sequences of a batch finish).</summary>
    public void SelectRows(Tensor rows)
    {
        for (int i = 0; i < _layers.Length; i++)
        {
            if (_layers[i] is not { } layer) continue;
            var k = layer.Key.index_select(0, rows).DetachFromDisposeScope();
            var v = layer.Value.index_select(0, rows).DetachFromDisposeScope();
            layer.Key.Dispose();
            layer.Value.Dispose();
            _layers[i] = (k, v);
        }
    }

    public void Dispose()
    {
        for (int i = 0; i < _layers.Length; i++)
        {
            if (_layers[i] is { } layer) { layer.Key.Dispose(); layer.Value.Dispose(); }
            _layers[i] = null;
        }
    }
}
