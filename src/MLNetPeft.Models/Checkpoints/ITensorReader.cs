using static TorchSharp.torch;

namespace MLNetPeft.Checkpoints;

/// <summary>
/// Named tensors read on demand from a file or a checkpoint folder: safetensors (<see cref="SafetensorsFile"/>,
/// <see cref="CheckpointWeights"/>) or PyTorch's zip format read weights-only (<see cref="TorchCheckpointFile"/>).
/// Shapes and dtypes are known, validated, before any tensor is read.
/// </summary>
public interface ITensorReader : IDisposable
{
    /// <summary>The file or folder, as errors name it.</summary>
    string Source { get; }
    IReadOnlyCollection<string> TensorNames { get; }
    bool Contains(string name);
    long[] ShapeOf(string name);
    ScalarType DTypeOf(string name);
    /// <summary>Reads one tensor into a new CPU tensor of its stored dtype (the caller disposes it).</summary>
    Tensor ReadTensor(string name);
    /// <summary>Fills <paramref name="destination"/> (same shape, any dtype and device) with the tensor's values.</summary>
    void ReadInto(string name, Tensor destination);
}
