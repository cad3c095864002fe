using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;
using MLNetPeft.Checkpoints;
using MLNetPeft.Runtime;
using static TorchSharp.torch;

namespace MLNetPeft.Gguf;

/// <summary>One tensor of a GGUF file: its name, torch shape (outermost first), ggml type and place in the data section.</summary>
public sealed record GgufTensorInfo(string Name, long[] Shape, GgmlType Type, long Offset, long ByteLength)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// A GGUF file (v2 or v3, little-endian) opened for reading. The whole header is validated on open, before anything
/// is allocated from the sizes it states: every count, length and offset is checked against the bytes the file has and
/// against fixed limits, so a truncated or lying file gives <see cref="InvalidDataException"/>, never a huge allocation.
/// Tensors are read on demand as torch tensors in torch's shape order; F32, F16 and BF16 keep their dtype, Q8_0 is
/// expanded to float32. Other types (K-quants, I-quants) are listed but reading them throws <see cref="NotSupportedException"/>.
/// </summary>
public sealed class GgufFile : ITensorReader
{
    /// <summary>Limits on what a header may claim (real files: ~10³ tensors, ~50 keys, vocabularies ≤ 2.6·10⁵ tokens).</summary>
    public const int MaxTensors = 1 << 16, MaxKeys = 1 << 16, MaxArrayLength = 1 << 24, MaxDimensions = 4;
    public const long MaxStringBytes = 1 << 26;

    private readonly Dictionary<string, GgufTensorInfo> _tensors;
    private readonly SafeFileHandle _handle;

    private GgufFile(string path, uint version, Dictionary<string, GgufValue> metadata, List<GgufTensorInfo> tensors, long dataStart, SafeFileHandle handle)
    {
        Path = path;
        Version = version;
        Metadata = metadata;
        Tensors = tensors;
        DataStart = dataStart;
        _tensors = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        _handle = handle;
    }

    public string Path { get; }
    public uint Version { get; }
    public IReadOnlyDictionary<string, GgufValue> Metadata { get; }
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }
    public long DataStart { get; }
    string ITensorReader.Source => Path;
    public IReadOnlyCollection<string> TensorNames => _tensors.Keys;
    public bool Contains(string name) => _tensors.ContainsKey(name);
    public long[] ShapeOf(string name) => Info(name).Shape;

    /// <summary>The dtype <see cref="ReadTensor"/> returns: float32 for F32 and Q8_0, float16, bfloat16.</summary>
    public ScalarType DTypeOf(string name) => Info(name).Type switch
    {
        GgmlType.F16 => ScalarType.Float16,
        GgmlType.BF16 => ScalarType.BFloat16,
        _ => ScalarType.Float32,
    };

    public GgufTensorInfo Info(string name) =>
        _tensors.TryGetValue(name, out var info) ? info : throw new KeyNotFoundException($"Tensor '{name}' is not in GGUF file '{Path}'.");

    /// <summary>A metadata value, or an <see cref="InvalidDataException"/> naming the key and file when it is missing.</summary>
    public GgufValue Require(string key) =>
        Metadata.TryGetValue(key, out var v) ? v : throw new InvalidDataException($"GGUF file '{Path}' has no metadata '{key}'.");

    public GgufValue? Find(string key) => Metadata.TryGetValue(key, out var v) ? v : null;

    /// <summary>An integer hyperparameter that must be present and fit an int.</summary>
    public int RequireInt32(string key)
    {
        long value = Require(key).AsInteger(key);
        return value is >= int.MinValue and <= int.MaxValue ? (int)value
            : throw new InvalidDataException($"GGUF file '{Path}': {key} is {value}, which does not fit a 32-bit integer.");
    }

    /// <summary>A token id under <paramref name="key"/> (bos, eos, pad …), or null when absent; an id outside the <paramref name="tokenCount"/> tokens is an error.</summary>
    public int? FindTokenId(string key, int tokenCount)
    {
        if (Find(key) is not { } value) return null;
        long id = value.AsInteger(key);
        return id >= 0 && id < tokenCount ? (int)id
            : throw new InvalidDataException($"GGUF file '{Path}': {key} is {id}, outside the {tokenCount} tokens.");
    }

    /// <summary>A numeric hyperparameter that must be present.</summary>
    public double RequireNumber(string key) => Require(key).AsNumber(key);

    /// <summary>Opens <paramref name="path"/> and validates its header.</summary>
    /// <exception cref="InvalidDataException">The file is not a well-formed GGUF file (the message says where).</exception>
    public static GgufFile Open(string path)
    {
        var fullPath = System.IO.Path.GetFullPath(path);
        if (!File.Exists(fullPath)) throw new FileNotFoundException($"GGUF file '{fullPath}' does not exist.", fullPath);
        (uint Version, Dictionary<string, GgufValue> Metadata, List<GgufTensorInfo> Tensors, long DataStart) header;
        try
        {
            using var stream = new FileStream(fullPath, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            header = new HeaderReader(stream, fullPath).Read();
        }
        catch (EndOfStreamException e)
        {
            throw new InvalidDataException($"GGUF file '{fullPath}' ends inside its header: {e.Message}", e);
        }
        var handle = File.OpenHandle(fullPath, FileMode.Open, FileAccess.Read, FileShare.Read);
        return new GgufFile(fullPath, header.Version, header.Metadata, header.Tensors, header.DataStart, handle);
    }

    /// <summary>Reads one tensor into a new CPU tensor (see <see cref="DTypeOf"/>).</summary>
    public Tensor ReadTensor(string name)
    {
        TorchRuntime.EnsureAvailable();
        var info = Info(name);
        if (!GgmlTypes.CanDecode(info.Type))
            throw new NotSupportedException($"GGUF file '{Path}': tensor '{name}' is of type {info.Type}, which this library cannot read; supported: F32, F16, BF16 and Q8_0 (requantise the file, e.g. with llama-quantize to Q8_0, or export it from HF weights).");
        var tensor = empty(info.Shape, DTypeOf(name));
        try
        {
            if (info.Type == GgmlType.Q8_0) ReadQ8_0(info, tensor);
            else ReadRaw(info, tensor);
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    public void ReadInto(string name, Tensor destination)
    {
        var info = Info(name);
        if (!info.Shape.SequenceEqual(destination.shape))
            throw new ArgumentException($"Tensor '{name}' of '{Path}' has shape [{string.Join(", ", info.Shape)}], the destination [{string.Join(", ", destination.shape)}].");
        using var value = ReadTensor(name);
        using var _ = no_grad();
        destination.copy_(value);
    }

    private const long ChunkBytes = 1 << 26;

    private void ReadRaw(GgufTensorInfo info, Tensor tensor)
    {
        using var flat = tensor.view(-1);
        long elementSize = tensor.ElementSize, chunk = ChunkBytes / elementSize;
        for (long start = 0; start < info.ElementCount; start += chunk)
        {
            long count = Math.Min(chunk, info.ElementCount - start);
            using var slice = flat.narrow(0, start, count);
            ReadExactly(slice.bytes, DataStart + info.Offset + start * elementSize);
        }
    }

    private void ReadQ8_0(GgufTensorInfo info, Tensor tensor)
    {
        using var flat = tensor.view(-1);
        // Chunks of 64 MiB of decoded floats: the buffers stay bounded whatever the tensor's size.
        long blocks = info.ElementCount / GgmlCodec.Q8BlockElements, chunkBlocks = ChunkBytes / (GgmlCodec.Q8BlockElements * sizeof(float));
        var raw = new byte[Math.Min(blocks, chunkBlocks) * GgmlCodec.Q8BlockBytes];
        var values = new float[Math.Min(blocks, chunkBlocks) * GgmlCodec.Q8BlockElements];
        for (long start = 0; start < blocks; start += chunkBlocks)
        {
            int count = (int)Math.Min(chunkBlocks, blocks - start);
            var bytes = raw.AsSpan(0, count * GgmlCodec.Q8BlockBytes);
            ReadExactly(bytes, DataStart + info.Offset + start * GgmlCodec.Q8BlockBytes);
            var decoded = values.AsSpan(0, count * GgmlCodec.Q8BlockElements);
            GgmlCodec.DequantizeQ8_0(bytes, decoded);
            using var slice = flat.narrow(0, start * GgmlCodec.Q8BlockElements, decoded.Length);
            MemoryMarshal.AsBytes(decoded).CopyTo(slice.bytes);
        }
    }

    private void ReadExactly(Span<byte> destination, long offset)
    {
        while (destination.Length > 0)
        {
            int n = RandomAccess.Read(_handle, destination, offset);
            if (n <= 0) throw new InvalidDataException($"GGUF file '{Path}' ended while reading tensor data at byte {offset:N0}.");
            destination = destination[n..];
            offset += n;
        }
    }

    public void Dispose() => _handle.Dispose();

    /// <summary>Parses the header with every size checked against the bytes left in the file.</summary>
    private sealed class HeaderReader(FileStream stream, string path)
    {
        private readonly long _length = stream.Length;
        private readonly byte[] _scratch = new byte[8];
        private static readonly UTF8Encoding StrictUtf8 = new(false, throwOnInvalidBytes: true);

        private long Remaining => _length - stream.Position;

        public (uint Version, Dictionary<string, GgufValue> Metadata, List<GgufTensorInfo> Tensors, long DataStart) Read()
        {
            if (_length < 24) throw Bad($"is {_length} bytes, shorter than a GGUF header (24)");
            uint magic = U32();
            if (magic != GgufWriter.Magic) throw Bad($"does not start with the GGUF magic (found 0x{magic:X8})");
            uint version = U32();
            if (version is not (2 or 3)) throw Bad($"has GGUF version {version}; supported: 2 and 3");
            ulong tensorCount = U64(), keyCount = U64();
            // A tensor info takes at least 32 bytes and a key/value at least 13: counts beyond what the file can hold are lies.
            if (tensorCount > MaxTensors || (long)tensorCount * 32 > Remaining) throw Bad($"claims {tensorCount:N0} tensors, more than it can hold (at most {Math.Min(MaxTensors, Remaining / 32):N0})");
            if (keyCount > MaxKeys || (long)keyCount * 13 > Remaining) throw Bad($"claims {keyCount:N0} metadata entries, more than it can hold");

            var metadata = new Dictionary<string, GgufValue>(StringComparer.Ordinal);
            for (ulong i = 0; i < keyCount; i++)
            {
                var key = Str("metadata key");
                if (key.Length == 0) throw Bad($"has an empty metadata key (entry {i})");
                var type = (GgufValueType)U32();
                var value = Value(type, key);
                if (!metadata.TryAdd(key, value)) throw Bad($"has metadata key '{key}' twice");
            }

            long alignment = GgufWriter.Alignment;
            if (metadata.TryGetValue("general.alignment", out var a))
            {
                if (a.Value is not uint au || au == 0 || (au & (au - 1)) != 0 || au > 1 << 16)
                    throw Bad($"has general.alignment {a}, expected a power of two up to 65536 as uint32");
                alignment = au;
            }

            var infos = new List<(string Name, long[] Ne, GgmlType Type, long Offset)>();
            var names = new HashSet<string>(StringComparer.Ordinal);
            for (ulong i = 0; i < tensorCount; i++)
            {
                var name = Str("tensor name");
                if (name.Length == 0) throw Bad($"has a tensor with an empty name (tensor {i})");
                if (!names.Add(name)) throw Bad($"has tensor '{name}' twice");
                uint dims = U32();
                if (dims is 0 or > MaxDimensions) throw Bad($"says tensor '{name}' has {dims} dimensions; GGUF allows 1 to {MaxDimensions}");
                var ne = new long[dims];
                for (int d = 0; d < dims; d++)
                {
                    ulong n = U64();
                    if (n == 0 || n > 1UL << 40) throw Bad($"says tensor '{name}' has dimension {d} of size {n}");
                    ne[d] = (long)n;
                }
                uint rawType = U32();
                if (!Enum.IsDefined(typeof(GgmlType), rawType) || GgmlTypes.Block((GgmlType)rawType) is null)
                    throw Bad($"says tensor '{name}' is of ggml type {rawType}, which is not a known tensor type");
                ulong offset = U64();
                if (offset > (ulong)_length) throw Bad($"says tensor '{name}' starts at data offset {offset:N0}, beyond the end of the file");
                if ((long)offset % alignment != 0) throw Bad($"says tensor '{name}' starts at data offset {offset:N0}, which is not a multiple of the alignment {alignment}");
                infos.Add((name, ne, (GgmlType)rawType, (long)offset));
            }

            long dataStart = (stream.Position + alignment - 1) / alignment * alignment;
            if (dataStart > _length) throw Bad("ends before its data section");
            long dataLength = _length - dataStart;
            var tensors = new List<GgufTensorInfo>(infos.Count);
            foreach (var (name, ne, type, offset) in infos)
            {
                var (blockElements, blockBytes) = GgmlTypes.Block(type)!.Value;
                if (ne[0] % blockElements != 0) throw Bad($"says tensor '{name}' ({type}) has rows of {ne[0]} values, not a multiple of its block of {blockElements}");
                long bytes;
                try { bytes = checked(ne.Aggregate(1L, (p, n) => checked(p * n)) / blockElements * blockBytes); }
                catch (OverflowException) { throw Bad($"says tensor '{name}' has dimensions [{string.Join(", ", ne)}], too many elements"); }
                if (bytes > dataLength || offset > dataLength - bytes)
                    throw Bad($"says tensor '{name}' takes bytes {offset:N0} to {offset + bytes:N0} of a data section of {dataLength:N0}");
                tensors.Add(new GgufTensorInfo(name, ne.Reverse().ToArray(), type, offset, bytes));
            }
            // As ggml requires: tensors follow each other in the order listed, each at the next aligned offset, and the
            // data section ends with the last one (padded or not), so a header that lost or gained bytes cannot shift them.
            long expected = 0;
            foreach (var t in tensors)
            {
                if (t.Offset != expected) throw Bad($"says tensor '{t.Name}' starts at data offset {t.Offset:N0}; after the tensors before it, it starts at {expected:N0}");
                expected = (t.Offset + t.ByteLength + alignment - 1) / alignment * alignment;
            }
            long unpaddedEnd = tensors.Count == 0 ? 0 : tensors[^1].Offset + tensors[^1].ByteLength;
            if (dataLength < unpaddedEnd || dataLength > expected)
                throw Bad($"has a data section of {dataLength:N0} bytes; its tensors take {unpaddedEnd:N0} ({expected:N0} padded)");
            return (version, metadata, tensors, dataStart);
        }

        private GgufValue Value(GgufValueType type, string key)
        {
            if (type != GgufValueType.Array) return new GgufValue(type, Scalar(type, key));
            var elementType = (GgufValueType)U32();
            if (elementType == GgufValueType.Array) throw Bad($"has nested arrays in metadata '{key}', which are not supported");
            int size = ScalarSize(elementType, key);
            ulong count = U64();
            if (count > MaxArrayLength || (long)count * size > Remaining)
                throw Bad($"says metadata '{key}' has {count:N0} elements, more than the file can hold");
            int n = (int)count;
            Array array = elementType switch
            {
                GgufValueType.UInt8 => new byte[n], GgufValueType.Int8 => new sbyte[n],
                GgufValueType.UInt16 => new ushort[n], GgufValueType.Int16 => new short[n],
                GgufValueType.UInt32 => new uint[n], GgufValueType.Int32 => new int[n],
                GgufValueType.Float32 => new float[n], GgufValueType.Bool => new bool[n],
                GgufValueType.String => new string[n], GgufValueType.UInt64 => new ulong[n],
                GgufValueType.Int64 => new long[n], _ => new double[n],
            };
            for (int i = 0; i < n; i++) array.SetValue(Scalar(elementType, key), i);
            return new GgufValue(GgufValueType.Array, array, elementType);
        }

        // The least bytes one element takes (a string: its 8-byte length).
        private int ScalarSize(GgufValueType type, string key) => type switch
        {
            GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
            GgufValueType.UInt16 or GgufValueType.Int16 => 2,
            GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
            GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 or GgufValueType.String => 8,
            _ => throw Bad($"has metadata '{key}' of unknown value type {(uint)type}"),
        };

        private object Scalar(GgufValueType type, string key)
        {
            ScalarSize(type, key);
            switch (type)
            {
                case GgufValueType.UInt8: return Bytes(1)[0];
                case GgufValueType.Int8: return (sbyte)Bytes(1)[0];
                case GgufValueType.Bool:
                    byte b = Bytes(1)[0];
                    return b switch { 0 => false, 1 => true, _ => throw Bad($"has bool metadata '{key}' of value {b}") };
                case GgufValueType.UInt16: return BinaryPrimitives.ReadUInt16LittleEndian(Bytes(2));
                case GgufValueType.Int16: return BinaryPrimitives.ReadInt16LittleEndian(Bytes(2));
                case GgufValueType.UInt32: return U32();
                case GgufValueType.Int32: return BinaryPrimitives.ReadInt32LittleEndian(Bytes(4));
                case GgufValueType.Float32: return BinaryPrimitives.ReadSingleLittleEndian(Bytes(4));
                case GgufValueType.UInt64: return U64();
                case GgufValueType.Int64: return BinaryPrimitives.ReadInt64LittleEndian(Bytes(8));
                case GgufValueType.Float64: return BinaryPrimitives.ReadDoubleLittleEndian(Bytes(8));
                default: return Str($"metadata '{key}'");
            }
        }

        private string Str(string what)
        {
            ulong length = U64();
            if (length > (ulong)MaxStringBytes || (long)length > Remaining)
                throw Bad($"has a {what} of {length:N0} bytes, more than {(length > (ulong)MaxStringBytes ? $"the limit of {MaxStringBytes:N0}" : "the file has left")}");
            var bytes = new byte[length];
            stream.ReadExactly(bytes);
            try { return StrictUtf8.GetString(bytes); }
            catch (DecoderFallbackException) { throw Bad($"has a {what} that is not valid UTF-8 (at byte {stream.Position - (long)length:N0})"); }
        }

        private ReadOnlySpan<byte> Bytes(int n)
        {
            stream.ReadExactly(_scratch, 0, n);
            return _scratch.AsSpan(0, n);
        }

        private uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4));
        private ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Bytes(8));

        private InvalidDataException Bad(string what) => new($"GGUF file '{path}' {what}.");
    }
}
