using System.Text;
using System.Text.Json;

namespace MLNetPeft.Checkpoints;

/// <summary>One tensor's entry in a safetensors header. Offsets are relative to the data section.</summary>
public sealed record SafetensorsTensorInfo(string Name, SafetensorsDType DType, long[] Shape, long Begin, long End)
{
    public long ByteLength => End - Begin;
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// The validated header of a safetensors file: an 8-byte little-endian length N, then N bytes of
/// UTF-8 JSON mapping tensor names to dtype, shape and data offsets, plus optional string metadata.
/// Parsing checks every rule of the format, so that a valid header can be trusted for sizes and
/// offsets; anything else raises <see cref="InvalidDataException"/> naming the file and the reason.
/// </summary>
public sealed class SafetensorsHeader
{
    /// <summary>Headers larger than this are refused (the reference implementation's limit).</summary>
    public const long MaxHeaderBytes = 100_000_000;
    public const string MetadataKey = "__metadata__";

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private SafetensorsHeader(IReadOnlyList<SafetensorsTensorInfo> tensors, IReadOnlyDictionary<string, string> metadata, long headerLength)
    {
        Tensors = tensors;
        Metadata = metadata;
        HeaderLength = headerLength;
        ByName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    /// <summary>Tensors in file order (ascending offsets).</summary>
    public IReadOnlyList<SafetensorsTensorInfo> Tensors { get; }
    public IReadOnlyDictionary<string, SafetensorsTensorInfo> ByName { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>The JSON length N; the data section starts at byte 8 + N.</summary>
    public long HeaderLength { get; }
    public long DataStart => 8 + HeaderLength;

    /// <summary>Reads and validates the header of <paramref name="stream"/> (of total length <paramref name="fileLength"/>).</summary>
    public static SafetensorsHeader Read(Stream stream, long fileLength, string fileName)
    {
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("safetensors files are little-endian; this machine is big-endian.");
        if (fileLength < 8)
            throw Invalid(fileName, $"the file has {fileLength} bytes, fewer than the 8-byte header length");
        Span<byte> prefix = stackalloc byte[8];
        stream.ReadExactly(prefix);
        ulong n = BitConverter.ToUInt64(prefix);
        if (n > MaxHeaderBytes)
            throw Invalid(fileName, $"the header length {n} exceeds the limit of {MaxHeaderBytes} bytes");
        if ((long)n > fileLength - 8)
            throw Invalid(fileName, $"the header length {n} runs past the end of the file ({fileLength} bytes)");
        var json = new byte[n];
        stream.ReadExactly(json);
        return Parse(json, fileLength - 8 - (long)n, fileName);
    }

    /// <summary>Validates header JSON against a data section of <paramref name="dataLength"/> bytes.</summary>
    public static SafetensorsHeader Parse(ReadOnlySpan<byte> json, long dataLength, string fileName)
    {
        if (json.Length == 0 || json[0] != (byte)'{')
            throw Invalid(fileName, "the header does not start with '{'");
        try { StrictUtf8.GetCharCount(json); }
        catch (DecoderFallbackException) { throw Invalid(fileName, "the header is not valid UTF-8"); }

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json.ToArray(), new JsonDocumentOptions { MaxDepth = 8 });
        }
        catch (JsonException e)
        {
            throw Invalid(fileName, $"the header is not well-formed JSON ({e.Message})");
        }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw Invalid(fileName, "the header is not a JSON object");
            var tensors = new List<SafetensorsTensorInfo>();
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            try
            {
                foreach (var property in doc.RootElement.EnumerateObject())
                {
                    if (!seen.Add(property.Name))
                        throw Invalid(fileName, $"the name '{property.Name}' appears twice in the header");
                    if (property.Name == MetadataKey)
                        ReadMetadata(property.Value, metadata, fileName);
                    else
                        tensors.Add(ReadTensor(property.Name, property.Value, fileName));
                }
            }
            catch (InvalidOperationException e)
            {
                // System.Text.Json raises this for escaped strings that are not valid Unicode (lone surrogates).
                throw Invalid(fileName, $"the header holds a string that is not valid Unicode ({e.Message})");
            }
            CheckLayout(tensors, dataLength, fileName);
            return new SafetensorsHeader(tensors, metadata, json.Length);
        }
    }

    private static void ReadMetadata(JsonElement value, Dictionary<string, string> metadata, string fileName)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw Invalid(fileName, $"'{MetadataKey}' is not an object of strings");
        foreach (var entry in value.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.String)
                throw Invalid(fileName, $"metadata entry '{entry.Name}' is not a string");
            if (!metadata.TryAdd(entry.Name, entry.Value.GetString()!))
                throw Invalid(fileName, $"metadata entry '{entry.Name}' appears twice");
        }
    }

    private static SafetensorsTensorInfo ReadTensor(string name, JsonElement value, string fileName)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw Invalid(fileName, $"the entry of tensor '{name}' is not an object");
        if (!value.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
            throw Invalid(fileName, $"tensor '{name}' has no string 'dtype'");
        var dtypeText = dtypeElement.GetString()!;
        if (!SafetensorsDTypes.TryParse(dtypeText, out var dtype))
            throw Invalid(fileName, $"tensor '{name}' has unsupported dtype '{dtypeText}'");

        if (!value.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
            throw Invalid(fileName, $"tensor '{name}' has no 'shape' array");
        var shape = new long[shapeElement.GetArrayLength()];
        long elements = 1;
        int i = 0;
        foreach (var dim in shapeElement.EnumerateArray())
        {
            if (dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt64(out var d) || d < 0)
                throw Invalid(fileName, $"tensor '{name}' has a shape entry that is not a non-negative integer");
            shape[i++] = d;
            try { elements = checked(elements * d); }
            catch (OverflowException) { throw Invalid(fileName, $"tensor '{name}' has a shape whose size overflows"); }
        }

        if (!value.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2)
            throw Invalid(fileName, $"tensor '{name}' has no 'data_offsets' pair");
        if (!TryGetInt64(offsets[0], out var begin) || !TryGetInt64(offsets[1], out var end) || begin < 0 || end < begin)
            throw Invalid(fileName, $"tensor '{name}' has invalid data_offsets (need 0 <= begin <= end)");

        long expectedBytes;
        try { expectedBytes = checked(elements * dtype.SizeInBytes()); }
        catch (OverflowException) { throw Invalid(fileName, $"tensor '{name}' has a shape whose byte size overflows"); }
        if (end - begin != expectedBytes)
            throw Invalid(fileName, $"tensor '{name}' spans {end - begin} bytes but its shape [{string.Join(", ", shape)}] of {dtype} needs {expectedBytes}");
        return new SafetensorsTensorInfo(name, dtype, shape, begin, end);
    }

    private static void CheckLayout(List<SafetensorsTensorInfo> tensors, long dataLength, string fileName)
    {
        tensors.Sort((a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin) : a.End.CompareTo(b.End));
        long covered = 0;
        foreach (var t in tensors)
        {
            if (t.Begin != covered)
                throw Invalid(fileName, t.Begin < covered
                    ? $"tensor '{t.Name}' overlaps the tensor before it (starts at {t.Begin}, previous data ends at {covered})"
                    : $"tensor '{t.Name}' leaves a gap before it (starts at {t.Begin}, previous data ends at {covered})");
            if (t.End > dataLength)
                throw Invalid(fileName, $"tensor '{t.Name}' ends at {t.End}, past the data section of {dataLength} bytes");
            covered = t.End;
        }
        if (covered != dataLength)
            throw Invalid(fileName, $"the tensors cover {covered} bytes but the data section has {dataLength}");
    }

    private static bool TryGetInt64(JsonElement e, out long value)
    {
        value = 0;
        return e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out value);
    }

    internal static InvalidDataException Invalid(string fileName, string reason) =>
        new($"Invalid safetensors file '{fileName}': {reason}.");
}
