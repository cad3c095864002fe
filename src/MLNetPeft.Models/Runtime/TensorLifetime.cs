using static TorchSharp.torch;

namespace MLNetPeft.Runtime;

/// <summary>
/// The library's rule for tensor lifetimes. A TorchSharp tensor that no managed code references any more can be
/// finalized by the GC while libtorch still uses its handle (seen as "tensor does not have a device", "Unknown scalar
/// type" or native heap corruption). So every public entry point that computes runs inside
/// <c>torch.NewDisposeScope()</c>, and only the tensors it deliberately returns or keeps leave that scope; a module's
/// own parameters and buffers never belong to a scope (TorchSharp's own layers detach theirs the same way), so
/// building or adapting a model inside a caller's scope does not dispose its weights when that scope ends.
/// </summary>
public static class TensorLifetime
{
    /// <summary>Takes every parameter and buffer of <paramref name="module"/> out of the dispose scope that holds it (if any).</summary>
    public static T OwnTensors<T>(T module) where T : nn.Module
    {
        ArgumentNullException.ThrowIfNull(module);
        foreach (var p in module.parameters()) p.DetachFromDisposeScope();
        foreach (var b in module.buffers()) b.DetachFromDisposeScope();
        return module;
    }
}
