using System.Buffers.Binary;
using System.Text;
using MLNetPeft.Checkpoints;
using static TorchSharp.torch;

namespace MLNetPeft.Gguf;

/// <summary>
/// Writes GGUF v3 files (ggml's <c>docs/gguf.md</c>): the magic and version, the metadata key/values in the order they
/// were added, the tensor infos (dimensions innermost first, as ggml counts them: a torch [out, in] matrix is ne = [in, out]),
/// then each tensor's data at an offset aligned to <see cref="Alignment"/> bytes. Little-endian throughout.
/// </summary>
public sealed class GgufWriter
{
    public const uint Magic = 0x46554747;   // "GGUF"
    public const uint Version = 3;
    public const int Alignment = 32;

    private readonly List<(string Key, GgufValue Value)> _metadata = [];
    // Each tensor comes either as a torch tensor (converted when written) or as bytes already in ggml's layout.
    private readonly List<(string Name, long[] Shape, GgmlType Type, Tensor? Tensor, byte[]? Raw)> _tensors = [];

    public IReadOnlyList<(string Key, GgufValue Value)> Metadata => _metadata;

    public GgufWriter Add(string key, GgufValue value)
    {
        if (_metadata.Any(m => m.Key == key)) throw new ArgumentException($"GGUF metadata key '{key}' is given twice.", nameof(key));
        _metadata.Add((key, value));
        return this;
    }

    /// <summary>Adds a tensor (any floating dtype, any device; not copied until written) to be stored as <paramref name="type"/>.</summary>
    public GgufWriter AddTensor(string name, Tensor tensor, GgmlType type)
    {
        if (_tensors.Any(t => t.Name == name)) throw new ArgumentException($"GGUF tensor '{name}' is given twice.", nameof(name));
        if (type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.Q8_0))
            throw new ArgumentException($"Tensor '{name}': type {type} cannot be written; supported: F32, F16, Q8_0.", nameof(type));
        if (tensor.dim() is < 1 or > 4) throw new ArgumentException($"Tensor '{name}' has {tensor.dim()} dimensions; GGUF holds 1 to 4.", nameof(tensor));
        if (type == GgmlType.Q8_0 && tensor.shape[^1] % GgmlCodec.Q8BlockElements != 0)
            throw new ArgumentException($"Tensor '{name}': Q8_0 needs rows of a multiple of {GgmlCodec.Q8BlockElements} values, its rows have {tensor.shape[^1]}.", nameof(type));
        AddEntry(name, tensor.shape, type, tensor, null);
        return this;
    }

    /// <summary>Adds a tensor whose data is already in ggml's layout of <paramref name="type"/> (any type with a known block size).</summary>
    internal GgufWriter AddRawTensor(string name, long[] shape, GgmlType type, byte[] data)
    {
        var (elements, bytes) = GgmlTypes.Block(type) ?? throw new ArgumentException($"ggml type {type} has no known block size.", nameof(type));
        long count = shape.Aggregate(1L, (a, b) => a * b);
        if (shape[^1] % elements != 0 || data.Length != count / elements * bytes)
            throw new ArgumentException($"Tensor '{name}': {data.Length} bytes are not {type} data of shape [{string.Join(", ", shape)}].", nameof(data));
        if (shape.Length is < 1 or > 4) throw new ArgumentException($"Tensor '{name}' has {shape.Length} dimensions; GGUF holds 1 to 4.", nameof(shape));
        AddEntry(name, shape, type, null, data);
        return this;
    }

    private void AddEntry(string name, long[] shape, GgmlType type, Tensor? tensor, byte[]? raw)
    {
        if (_tensors.Any(t => t.Name == name)) throw new ArgumentException($"GGUF tensor '{name}' is given twice.", nameof(name));
        _tensors.Add((name, shape, type, tensor, raw));
    }

    /// <summary>Writes the file atomically (a temporary file renamed over <paramref name="path"/>).</summary>
    public void Save(string path) => AtomicFile.Write(path, Write);

    public void Write(Stream stream)
    {
        using var header = new MemoryStream();
        WriteUInt32(header, Magic);
        WriteUInt32(header, Version);
        WriteUInt64(header, (ulong)_tensors.Count);
        WriteUInt64(header, (ulong)_metadata.Count);
        foreach (var (key, value) in _metadata)
        {
            WriteString(header, key);
            WriteUInt32(header, (uint)value.Type);
            WriteValue(header, value);
        }
        long offset = 0;
        foreach (var (name, shape, type, tensor, raw) in _tensors)
        {
            WriteString(header, name);
            WriteUInt32(header, (uint)shape.Length);
            for (int d = shape.Length - 1; d >= 0; d--) WriteUInt64(header, (ulong)shape[d]);
            WriteUInt32(header, (uint)type);
            WriteUInt64(header, (ulong)offset);
            offset = Align(offset + (raw?.Length ?? ByteLength(tensor!, type)));
        }
        header.Write(new byte[Align(header.Length) - header.Length]);
        header.Position = 0;
        header.CopyTo(stream);
        foreach (var (_, _, type, tensor, raw) in _tensors)
        {
            long written;
            if (raw is not null) { stream.Write(raw); written = raw.Length; }
            else written = WriteData(stream, tensor!, type);
            stream.Write(new byte[Align(written) - written]);
        }
    }

    private static long Align(long n) => (n + Alignment - 1) / Alignment * Alignment;

    private static long ByteLength(Tensor tensor, GgmlType type) => type switch
    {
        GgmlType.F32 => tensor.numel() * 4,
        GgmlType.F16 => tensor.numel() * 2,
        _ => tensor.numel() / GgmlCodec.Q8BlockElements * GgmlCodec.Q8BlockBytes,
    };

    // Rows go out in slices, so that no single buffer approaches the 2 GiB limit of spans.
    private static long WriteData(Stream stream, Tensor tensor, GgmlType type)
    {
        using var scope = NewDisposeScope();
        var target = type == GgmlType.F16 ? ScalarType.Float16 : ScalarType.Float32;
        var flat = tensor.detach().to(target, CPU).contiguous().view(-1);
        long total = flat.shape[0], written = 0;
        long chunk = 1L << 24;   // a multiple of the Q8_0 block
        for (long start = 0; start < total; start += chunk)
        {
            using var slice = flat.narrow(0, start, Math.Min(chunk, total - start));
            if (type == GgmlType.Q8_0)
            {
                var values = slice.data<float>().ToArray();
                var bytes = new byte[values.Length / GgmlCodec.Q8BlockElements * GgmlCodec.Q8BlockBytes];
                GgmlCodec.QuantizeQ8_0(values, bytes);
                stream.Write(bytes);
                written += bytes.Length;
            }
            else
            {
                var bytes = slice.bytes;
                stream.Write(bytes);
                written += bytes.Length;
            }
        }
        return written;
    }

    private static void WriteValue(Stream s, GgufValue value)
    {
        if (value.Type != GgufValueType.Array)
        {
            WriteScalar(s, value.Type, value.Value);
            return;
        }
        var array = (Array)value.Value;
        WriteUInt32(s, (uint)value.ElementType!.Value);
        WriteUInt64(s, (ulong)array.Length);
        foreach (var item in array) WriteScalar(s, value.ElementType.Value, item!);
    }

    private static void WriteScalar(Stream s, GgufValueType type, object v)
    {
        Span<byte> b = stackalloc byte[8];
        switch (type)
        {
            case GgufValueType.UInt8: s.WriteByte((byte)v); break;
            case GgufValueType.Int8: s.WriteByte(unchecked((byte)(sbyte)v)); break;
            case GgufValueType.Bool: s.WriteByte((bool)v ? (byte)1 : (byte)0); break;
            case GgufValueType.UInt16: BinaryPrimitives.WriteUInt16LittleEndian(b, (ushort)v); s.Write(b[..2]); break;
            case GgufValueType.Int16: BinaryPrimitives.WriteInt16LittleEndian(b, (short)v); s.Write(b[..2]); break;
            case GgufValueType.UInt32: WriteUInt32(s, (uint)v); break;
            case GgufValueType.Int32: BinaryPrimitives.WriteInt32LittleEndian(b, (int)v); s.Write(b[..4]); break;
            case GgufValueType.Float32: BinaryPrimitives.WriteSingleLittleEndian(b, (float)v); s.Write(b[..4]); break;
            case GgufValueType.UInt64: WriteUInt64(s, (ulong)v); break;
            case GgufValueType.Int64: BinaryPrimitives.WriteInt64LittleEndian(b, (long)v); s.Write(b); break;
            case GgufValueType.Float64: BinaryPrimitives.WriteDoubleLittleEndian(b, (double)v); s.Write(b); break;
            case GgufValueType.String: WriteString(s, (string)v); break;
            default: throw new ArgumentException($"GGUF value type {type} cannot be written as a scalar.");
        }
    }

    private static void WriteUInt32(Stream s, uint v) { Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteUInt32LittleEndian(b, v); s.Write(b); }
    private static void WriteUInt64(Stream s, ulong v) { Span<byte> b = stackalloc byte[8]; BinaryPrimitives.WriteUInt64LittleEndian(b, v); s.Write(b); }

    private static void WriteString(Stream s, string v)
    {
        var bytes = Encoding.UTF8.GetBytes(v);
        WriteUInt64(s, (ulong)bytes.Length);
        s.Write(bytes);
    }
}
