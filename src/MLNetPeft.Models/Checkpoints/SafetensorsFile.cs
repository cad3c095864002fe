using System.IO.MemoryMappedFiles;
using MLNetPeft.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Checkpoints;

/// <summary>
/// A safetensors file opened for reading. The header is validated on open; tensor data is memory-mapped
/// and copied exactly once, straight into the storage of a new TorchSharp tensor.
/// </summary>
public sealed class SafetensorsFile : ITensorReader
{
    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;

    private SafetensorsFile(string path, SafetensorsHeader header, MemoryMappedFile? map, MemoryMappedViewAccessor? view)
    {
        Path = path;
        Header = header;
        _map = map;
        _view = view;
    }

    public string Path { get; }
    public SafetensorsHeader Header { get; }
    public IReadOnlyList<SafetensorsTensorInfo> Tensors => Header.Tensors;
    public IReadOnlyDictionary<string, string> Metadata => Header.Metadata;
    public bool Contains(string name) => Header.ByName.ContainsKey(name);
    string ITensorReader.Source => Path;
    public IReadOnlyCollection<string> TensorNames => Header.ByName.Keys.ToList();
    public long[] ShapeOf(string name) => Info(name).Shape;
    public ScalarType DTypeOf(string name) => Info(name).DType.ToScalarType();

    /// <summary>Opens and validates <paramref name="path"/>; throws <see cref="InvalidDataException"/> for a malformed file.</summary>
    public static SafetensorsFile Open(string path)
    {
        var fullPath = System.IO.Path.GetFullPath(path);
        if (!File.Exists(fullPath))
            throw new FileNotFoundException($"Safetensors file '{fullPath}' does not exist.", fullPath);
        SafetensorsHeader header;
        long length;
        using (var stream = new FileStream(fullPath, FileMode.Open, FileAccess.Read, FileShare.Read))
        {
            length = stream.Length;
            header = SafetensorsHeader.Read(stream, length, fullPath);
        }
        if (length == header.DataStart)
            return new SafetensorsFile(fullPath, header, null, null); // no data bytes to map
        var map = MemoryMappedFile.CreateFromFile(fullPath, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        try
        {
            var view = map.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
            return new SafetensorsFile(fullPath, header, map, view);
        }
        catch
        {
            map.Dispose();
            throw;
        }
    }

    public SafetensorsTensorInfo Info(string name) =>
        Header.ByName.TryGetValue(name, out var info) ? info
            : throw new KeyNotFoundException($"Tensor '{name}' is not in safetensors file '{Path}'.");

    /// <summary>Reads one tensor into a new CPU tensor of its stored dtype.</summary>
    public Tensor ReadTensor(string name)
    {
        TorchRuntime.EnsureAvailable();
        var info = Info(name);
        var tensor = empty(info.Shape, info.DType.ToScalarType());
        CopyBytes(info, tensor);
        return tensor;
    }

    /// <summary>
    /// Fills <paramref name="destination"/> (same shape) with the tensor's values. A contiguous CPU destination of the
    /// stored dtype receives the bytes straight from the mapped file; otherwise the values are read, then converted.
    /// </summary>
    public void ReadInto(string name, Tensor destination)
    {
        var info = Info(name);
        if (!info.Shape.SequenceEqual(destination.shape))
            throw new ArgumentException($"Tensor '{name}' of '{Path}' has shape [{string.Join(", ", info.Shape)}], the destination [{string.Join(", ", destination.shape)}].");
        if (destination.device_type == DeviceType.CPU && destination.is_contiguous() && destination.dtype == info.DType.ToScalarType())
        {
            CopyBytes(info, destination);
            return;
        }
        using var value = ReadTensor(name);
        using var _ = no_grad();
        destination.copy_(value);
    }

    private void CopyBytes(SafetensorsTensorInfo info, Tensor destination)
    {
        if (info.ByteLength == 0) return;
        unsafe
        {
            byte* basePtr = null;
            _view!.SafeMemoryMappedViewHandle.AcquirePointer(ref basePtr);
            try
            {
                byte* source = basePtr + _view.PointerOffset + Header.DataStart + info.Begin;
                CopyInto(destination, source, info.ByteLength);
            }
            finally
            {
                _view.SafeMemoryMappedViewHandle.ReleasePointer();
            }
        }
    }

    /// <summary>Reads every tensor; the caller owns (and disposes) the returned tensors.</summary>
    public Dictionary<string, Tensor> ReadAll() => Tensors.ToDictionary(t => t.Name, t => ReadTensor(t.Name), StringComparer.Ordinal);

    /// <summary>Bytes copied per slice (1 GiB); tests lower it to run the path of tensors over 2 GiB on small ones.</summary>
    internal static long ChunkBytes { get => t_chunkBytes ?? 1L << 30; set => t_chunkBytes = value; }
    [ThreadStatic] private static long? t_chunkBytes;   // per thread: a test's setting cannot slow another test down

    // Spans are limited to int.MaxValue bytes, so large tensors are copied through 1-D slices of the same storage.
    private static unsafe void CopyInto(Tensor destination, byte* source, long byteLength)
    {
        long chunkBytes = ChunkBytes;
        if (byteLength <= chunkBytes)
        {
            new ReadOnlySpan<byte>(source, (int)byteLength).CopyTo(destination.bytes);
            return;
        }
        using var flat = destination.view(-1);
        long elementSize = destination.ElementSize;
        long chunkElements = Math.Max(1, chunkBytes / elementSize);
        for (long start = 0; start < flat.shape[0]; start += chunkElements)
        {
            long count = Math.Min(chunkElements, flat.shape[0] - start);
            using var slice = flat.narrow(0, start, count);
            new ReadOnlySpan<byte>(source + start * elementSize, (int)(count * elementSize)).CopyTo(slice.bytes);
        }
    }

    public void Dispose()
    {
        _view?.Dispose();
        _map?.Dispose();
    }
}
