using System.IO.Compression;
using MLNetPeft.Checkpoints.TorchPickle;
using MLNetPeft.Runtime;
using static TorchSharp.torch;

namespace MLNetPeft.Checkpoints;

/// <summary>
/// A PyTorch checkpoint in <c>torch.save</c>'s zip format (<c>pytorch_model.bin</c>, <c>adapter_model.bin</c>, a
/// <c>.pt</c> tensor), read weights-only: the zip's <c>data.pkl</c> is interpreted by <see cref="RestrictedUnpickler"/>
/// (tensor rebuilding only, nothing executed) and each tensor's bytes come from its storage record
/// <c>data/{key}</c>. Every tensor is checked on open: its storage record exists and holds exactly the element count
/// the pickle claims, its dtype is one safetensors knows, and its view (offset, shape, strides) stays inside the storage.
/// Anything else is an <see cref="InvalidDataException"/> that names the file. The legacy pre-1.6 format (a bare pickle)
/// is refused.
/// </summary>
public sealed class TorchCheckpointFile : ITensorReader
{
    /// <summary>The largest <c>data.pkl</c> accepted (state dicts of very large models pickle to a few MB).</summary>
    public const long MaxPickleBytes = 256L << 20;
    /// <summary>The name under which a file that holds one tensor (not a dict) offers it.</summary>
    public const string SingleTensorName = "";

    private readonly ZipArchive _zip;
    private readonly string _prefix;
    private readonly Dictionary<string, TensorReference> _tensors;
    private readonly Dictionary<string, ZipArchiveEntry> _records;

    private TorchCheckpointFile(string path, ZipArchive zip, string prefix, Dictionary<string, TensorReference> tensors, Dictionary<string, ZipArchiveEntry> records)
    {
        Source = path;
        _zip = zip;
        _prefix = prefix;
        _tensors = tensors;
        _records = records;
    }

    public string Source { get; }
    public IReadOnlyCollection<string> TensorNames => _tensors.Keys;
    public bool Contains(string name) => _tensors.ContainsKey(name);
    public long[] ShapeOf(string name) => Tensor(name).Shape;
    public ScalarType DTypeOf(string name) => RestrictedUnpickler.StorageTypes[Tensor(name).Storage.StorageType].DType;

    /// <summary>Opens <paramref name="path"/> and validates every tensor's description; reads no tensor data yet.</summary>
    public static TorchCheckpointFile Open(string path)
    {
        var fullPath = Path.GetFullPath(path);
        if (!File.Exists(fullPath)) throw new FileNotFoundException($"PyTorch checkpoint '{fullPath}' does not exist.", fullPath);
        var stream = new FileStream(fullPath, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            Span<byte> magic = stackalloc byte[4];
            if (stream.Read(magic) < 4 || magic[0] != (byte)'P' || magic[1] != (byte)'K')
                throw new InvalidDataException($"'{fullPath}' is not a zip archive: only torch.save's zip format (PyTorch 1.6 and later) is read, " +
                    "not the legacy bare pickle; save it again with a recent PyTorch, or convert it to safetensors.");
            stream.Position = 0;
            var zip = Wrap(fullPath, () => new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: false));
            try
            {
                return Read(fullPath, zip);
            }
            catch
            {
                zip.Dispose();
                throw;
            }
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    private static TorchCheckpointFile Read(string path, ZipArchive zip)
    {
        var entries = Wrap(path, () => zip.Entries.ToList());
        var pickles = entries.Where(e => e.FullName.EndsWith("/data.pkl", StringComparison.Ordinal) && e.FullName.Count(c => c == '/') == 1).ToList();
        if (pickles.Count != 1)
            throw new InvalidDataException($"'{path}' has {pickles.Count} '<name>/data.pkl' records; a torch.save archive has exactly one.");
        var prefix = pickles[0].FullName[..^"data.pkl".Length];
        if (entries.FirstOrDefault(e => e.FullName == prefix + "byteorder") is { } order && ReadAll(path, order, 16) is var bytes &&
            System.Text.Encoding.ASCII.GetString(bytes) != "little")
            throw new InvalidDataException($"'{path}' was saved on a big-endian machine; only little-endian checkpoints are read.");
        var root = RestrictedUnpickler.Load(ReadAll(path, pickles[0], MaxPickleBytes), path);
        var records = entries.Where(e => e.FullName.StartsWith(prefix + "data/", StringComparison.Ordinal))
            .ToDictionary(e => e.FullName[(prefix.Length + "data/".Length)..], StringComparer.Ordinal);
        var tensors = new Dictionary<string, TensorReference>(StringComparer.Ordinal);
        switch (root)
        {
            case TensorReference single:
                tensors[SingleTensorName] = single;
                break;
            case PickleDict dict:
                foreach (var (key, value) in dict.Items)
                {
                    if (key is not string name) throw new InvalidDataException($"'{path}' holds a dict whose keys are not all names.");
                    if (value is not TensorReference tensor)
                        throw new InvalidDataException($"'{path}': entry '{name}' is a {Describe(value)}, not a tensor; only flat state dicts of tensors are read.");
                    if (!tensors.TryAdd(name, tensor)) throw new InvalidDataException($"'{path}' names tensor '{name}' twice.");
                }
                break;
            default:
                throw new InvalidDataException($"'{path}' holds a {Describe(root)}, not a tensor or a state dict of tensors.");
        }
        long fileLength = new FileInfo(path).Length;
        foreach (var (name, tensor) in tensors) Check(path, name, tensor, records, fileLength);
        return new TorchCheckpointFile(path, zip, prefix, tensors, records);
    }

    private static string Describe(object? value) => value switch
    {
        null => "None",
        string => "string",
        long or double or bool => "number",
        PickleDict => "dict",
        List<object?> => "list",
        object?[] => "tuple",
        _ => value.GetType().Name,
    };

    /// <summary>The view must lie inside its storage, whose record must hold exactly the claimed elements.</summary>
    private static void Check(string path, string name, TensorReference t, Dictionary<string, ZipArchiveEntry> records, long fileLength)
    {
        var what = name.Length == 0 ? "the tensor" : $"tensor '{name}'";
        if (!records.TryGetValue(t.Storage.Key, out var record))
            throw new InvalidDataException($"'{path}': {what} points to storage '{t.Storage.Key}', which the archive does not hold.");
        int size = RestrictedUnpickler.StorageTypes[t.Storage.StorageType].Size;
        long recordBytes = Wrap(path, () => record.Length);
        // torch.save stores records uncompressed; a compressed one could claim any size (and make us allocate it).
        if (Wrap(path, () => record.CompressedLength) != recordBytes || recordBytes > fileLength)
            throw new InvalidDataException($"'{path}': storage record '{record.FullName}' is compressed or larger than the file; torch.save writes them stored.");
        if (t.Storage.ElementCount > recordBytes / size || t.Storage.ElementCount * size != recordBytes)
            throw new InvalidDataException($"'{path}': storage '{t.Storage.Key}' claims {t.Storage.ElementCount} elements of {size} bytes but its record holds {recordBytes} bytes.");
        if (t.Shape.Length != t.Stride.Length) throw new InvalidDataException($"'{path}': {what} has {t.Shape.Length} sizes but {t.Stride.Length} strides.");
        if (t.Offset < 0 || t.Shape.Any(s => s < 0) || t.Stride.Any(s => s < 0))
            throw new InvalidDataException($"'{path}': {what} has a negative offset, size or stride.");
        if (t.Shape.Contains(0)) return;
        long elements = 1;
        foreach (var s in t.Shape)
        {
            if (elements > t.Storage.ElementCount / s)
                throw new InvalidDataException($"'{path}': {what} has more elements ([{string.Join(", ", t.Shape)}]) than its storage ({t.Storage.ElementCount}).");
            elements *= s;
        }
        long last = t.Offset;
        for (int d = 0; d < t.Shape.Length; d++) last += (t.Shape[d] - 1) * t.Stride[d];
        if (last >= t.Storage.ElementCount)
            throw new InvalidDataException($"'{path}': {what} reaches element {last} of a storage of {t.Storage.ElementCount}.");
    }

    private TensorReference Tensor(string name) =>
        _tensors.TryGetValue(name, out var t) ? t : throw new KeyNotFoundException($"Tensor '{name}' is not in PyTorch checkpoint '{Source}'.");

    public Tensor ReadTensor(string name)
    {
        TorchRuntime.EnsureAvailable();
        var t = Tensor(name);
        var (dtype, size) = RestrictedUnpickler.StorageTypes[t.Storage.StorageType];
        using var scope = NewDisposeScope();
        var storage = empty([t.Storage.ElementCount], dtype);
        if (t.Storage.ElementCount > 0)
        {
            using var stream = Wrap(Source, () => _records[t.Storage.Key].Open());
            Fill(stream, storage, t.Storage.ElementCount * size);
        }
        // The saved view, materialised as a contiguous tensor of its own.
        return storage.as_strided(t.Shape, t.Stride, t.Offset).contiguous().clone().MoveToOuterDisposeScope();
    }

    public void ReadInto(string name, Tensor destination)
    {
        var shape = ShapeOf(name);
        if (!shape.SequenceEqual(destination.shape))
            throw new ArgumentException($"Tensor '{name}' of '{Source}' has shape [{string.Join(", ", shape)}], the destination [{string.Join(", ", destination.shape)}].");
        using var value = ReadTensor(name);
        using var _ = no_grad();
        destination.copy_(value);
    }

    /// <summary>Copies exactly <paramref name="bytes"/> bytes from the record into the tensor, in chunks (spans stop at 2 GiB).</summary>
    private void Fill(Stream stream, Tensor storage, long bytes)
    {
        const int chunk = 1 << 30;
        long elementSize = storage.ElementSize;
        for (long done = 0; done < bytes;)
        {
            long count = Math.Min(chunk / elementSize, (bytes - done) / elementSize);
            using var slice = storage.narrow(0, done / elementSize, count);
            var target = slice.bytes;
            int read = 0;
            while (read < target.Length)
            {
                int n;
                try { n = stream.Read(target[read..]); }
                catch (Exception e) when (e is InvalidDataException or IOException) { throw new InvalidDataException($"'{Source}': a storage record cannot be read: {e.Message}", e); }
                if (n == 0) throw new InvalidDataException($"'{Source}': a storage record ends before its {bytes} bytes.");
                read += n;
            }
            done += target.Length;
        }
    }

    private static byte[] ReadAll(string path, ZipArchiveEntry entry, long limit)
    {
        long length = Wrap(path, () => entry.Length);
        if (Wrap(path, () => entry.CompressedLength) != length || length > new FileInfo(path).Length)
            throw new InvalidDataException($"'{path}': record '{entry.FullName}' is compressed or larger than the file; torch.save writes records stored.");
        if (length > limit) throw new InvalidDataException($"'{path}': record '{entry.FullName}' is {length} bytes, more than the {limit} accepted.");
        var bytes = new byte[length];
        using var stream = Wrap(path, entry.Open);
        int read = 0;
        while (read < bytes.Length)
        {
            int n = Wrap(path, () => stream.Read(bytes, read, bytes.Length - read));
            if (n == 0) throw new InvalidDataException($"'{path}': record '{entry.FullName}' ends early.");
            read += n;
        }
        return bytes;
    }

    /// <summary>Whatever a damaged zip makes System.IO.Compression throw becomes an <see cref="InvalidDataException"/> naming the file.</summary>
    private static T Wrap<T>(string path, Func<T> read)
    {
        try
        {
            return read();
        }
        catch (Exception e) when (e is InvalidDataException or IOException or NotSupportedException or ArgumentException or IndexOutOfRangeException or OverflowException)
        {
            throw e is InvalidDataException && e.Message.Contains(path, StringComparison.Ordinal)
                ? e
                : new InvalidDataException($"'{path}' is not a readable torch.save zip archive: {e.Message}", e);
        }
    }

    public void Dispose() => _zip.Dispose();
}
