using System.Text.Json;
using static TorchSharp.torch;

namespace MLNetPeft.Checkpoints;

/// <summary>
/// Writes safetensors files: tensors sorted by name, header JSON padded with spaces to a multiple of
/// 8 bytes (so the data section is aligned), written atomically (temporary file, then rename).
/// </summary>
public static class SafetensorsWriter
{
    /// <summary>Bytes written per slice (1 GiB); tests lower it to run the path of tensors over 2 GiB on small ones.</summary>
    internal static long ChunkBytes { get => t_chunkBytes ?? 1L << 30; set => t_chunkBytes = value; }
    [ThreadStatic] private static long? t_chunkBytes;   // per thread: a test's setting cannot slow another test down

    public static void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        AtomicFile.Write(path, stream => Write(stream, list, metadata));
    }

    /// <summary>The number of bytes <see cref="Write"/> produces for these tensors' data section.</summary>
    public static long DataBytes(IEnumerable<Tensor> tensors) => tensors.Sum(t => t.NumberOfElements * t.ElementSize);

    public static void Write(Stream stream, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        MLNetPeft.Runtime.TorchRuntime.EnsureAvailable();
        var ordered = tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        var duplicate = ordered.Zip(ordered.Skip(1)).FirstOrDefault(p => p.First.Key == p.Second.Key);
        if (duplicate.First.Key is not null)
            throw new ArgumentException($"Tensor name '{duplicate.First.Key}' is given twice.", nameof(tensors));
        if (ordered.Any(kv => kv.Key == SafetensorsHeader.MetadataKey))
            throw new ArgumentException($"'{SafetensorsHeader.MetadataKey}' is reserved and cannot name a tensor.", nameof(tensors));

        var header = BuildHeader(ordered, metadata);
        Span<byte> length = stackalloc byte[8];
        BitConverter.TryWriteBytes(length, (ulong)header.Length);
        stream.Write(length);
        stream.Write(header);
        foreach (var (_, tensor) in ordered)
            WriteData(stream, tensor);
    }

    private static byte[] BuildHeader(List<KeyValuePair<string, Tensor>> ordered, IReadOnlyDictionary<string, string>? metadata)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject(SafetensorsHeader.MetadataKey);
                foreach (var (key, value) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                    json.WriteString(key, value);
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, tensor) in ordered)
            {
                var dtype = SafetensorsDTypes.FromScalarType(tensor.dtype);
                long bytes = tensor.NumberOfElements * tensor.ElementSize;
                json.WriteStartObject(name);
                json.WriteString("dtype", dtype.ToString());
                json.WriteStartArray("shape");
                foreach (var d in tensor.shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + bytes);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += bytes;
            }
            json.WriteEndObject();
        }
        var text = buffer.ToArray();
        int padded = (text.Length + 7) / 8 * 8;
        var header = new byte[padded];
        text.CopyTo(header, 0);
        header.AsSpan(text.Length).Fill((byte)' ');
        return header;
    }

    private static void WriteData(Stream stream, Tensor tensor)
    {
        if (tensor.NumberOfElements == 0) return;
        // A CPU, contiguous view of the data; a copy only when the tensor is not already one.
        var cpu = tensor.device_type == TorchSharp.DeviceType.CPU ? tensor : tensor.cpu();
        var contiguous = cpu.is_contiguous() ? cpu : cpu.contiguous();
        try
        {
            // Spans stop at 2 GiB: larger tensors are written through slices (1 GiB) of the same storage.
            long chunkElements = Math.Max(1, ChunkBytes / tensor.ElementSize);
            using var flat = contiguous.view(-1);
            for (long start = 0; start < flat.shape[0]; start += chunkElements)
            {
                using var slice = flat.narrow(0, start, Math.Min(chunkElements, flat.shape[0] - start));
                stream.Write(slice.bytes);
            }
        }
        finally
        {
            if (!ReferenceEquals(contiguous, tensor)) contiguous.Dispose();
            if (!ReferenceEquals(cpu, tensor) && !ReferenceEquals(cpu, contiguous)) cpu.Dispose();
        }
    }
}
