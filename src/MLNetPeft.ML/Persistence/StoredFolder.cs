using System.Collections.Concurrent;
using System.Security.Cryptography;
using Microsoft.ML;

namespace MLNetPeft.ML.Persistence;

/// <summary>
/// One part of a saved model (a base checkpoint, an adapter, a head) as files in a folder that this object owns, on disk
/// rather than in memory: a transformer keeps its checkpoint only there, while the weights themselves live in the model.
/// Into and out of the ML.NET model zip the files stream in chunks, one binary stream each, so files over 2 GiB work
/// and nothing is held whole in memory. The zip records each file's length and SHA-256, and loading checks both
/// while it copies: a damaged or truncated zip fails naming the file instead of loading something else. The folder is
/// deleted when the object is disposed (or collected, or when the process exits).
/// </summary>
internal sealed class StoredFolder : IDisposable
{
    /// <summary>Files one part may hold (checkpoints have a handful; shards a few hundred).</summary>
    public const int MaxFiles = 10_000;
    /// <summary>The largest single file a model zip may declare.</summary>
    public const long MaxFileBytes = 1L << 40;
    /// <summary>Copy buffer; the streaming path is the same for any size.</summary>
    internal static int ChunkBytes { get => t_chunkBytes ?? 1 << 20; set => t_chunkBytes = value; }
    [ThreadStatic] private static int? t_chunkBytes;   // per thread: a test's setting cannot slow another test down

    private readonly Dictionary<string, string> _sha256;
    private int _disposed;

    // Finalizers do not run when a process exits: a process that loads a model and ends without disposing it (an app,
    // the CLI, a fresh-process test) would leave a model-sized folder in the temp directory each time.
    private static readonly ConcurrentDictionary<string, byte> s_owned = new(StringComparer.Ordinal);
    static StoredFolder() => AppDomain.CurrentDomain.ProcessExit += (_, _) => { foreach (var path in s_owned.Keys) Remove(path); };

    private StoredFolder(string path, Dictionary<string, string> sha256)
    {
        Path = path;
        _sha256 = sha256;
    }

    ~StoredFolder() => Delete();

    /// <summary>The folder holding the files.</summary>
    public string Path { get; }

    /// <summary>Each file's SHA-256 (lower-case hex), by file name.</summary>
    public IReadOnlyDictionary<string, string> Sha256 => _sha256;

    /// <summary>Total bytes of the files.</summary>
    public long TotalBytes => _sha256.Keys.Sum(name => new FileInfo(System.IO.Path.Combine(Path, name)).Length);

    /// <summary>Takes over the files of <paramref name="folder"/> (moved, not copied) into a folder of its own.</summary>
    public static StoredFolder Take(string folder)
    {
        var owned = NewFolder();
        try
        {
            var hashes = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var file in Directory.GetFiles(folder).Order(StringComparer.Ordinal))
            {
                var name = System.IO.Path.GetFileName(file);
                var target = System.IO.Path.Combine(owned, name);
                File.Move(file, target);
                hashes[name] = Hash(target);
            }
            return new StoredFolder(owned, hashes);
        }
        catch
        {
            Remove(owned);
            throw;
        }
    }

    /// <summary>Writes the file list (name, length, SHA-256) to the model stream and each file as the binary stream <paramref name="prefix"/> + name.</summary>
    public void Save(ModelSaveContext ctx, string prefix)
    {
        ctx.Writer.Write(_sha256.Count);
        foreach (var (name, hash) in _sha256.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var path = System.IO.Path.Combine(Path, name);
            ctx.Writer.Write(name);
            ctx.Writer.Write(new FileInfo(path).Length);
            ctx.Writer.Write(hash);
            ctx.SaveBinaryStream(prefix + name, writer =>
            {
                writer.Flush();
                using var source = File.OpenRead(path);
                source.CopyTo(writer.BaseStream, ChunkBytes);
            });
        }
    }

    /// <summary>
    /// Reads what <see cref="Save"/> wrote into a new folder of its own, checking every name, length and SHA-256 before
    /// the files are used; a mismatch is an <see cref="InvalidDataException"/> that names the file.
    /// </summary>
    public static StoredFolder Load(ModelLoadContext ctx, string prefix, string what)
    {
        int count = ctx.Reader.ReadInt32();
        if (count is < 0 or > MaxFiles) throw new InvalidDataException($"The model zip lists {count} {what} files; it is corrupt.");
        var owned = NewFolder();
        try
        {
            var hashes = new Dictionary<string, string>(StringComparer.Ordinal);
            for (int i = 0; i < count; i++)
            {
                var name = ctx.Reader.ReadString();
                if (name.Length == 0 || name != System.IO.Path.GetFileName(name) || name is "." or ".." || name.Contains('\\') || hashes.ContainsKey(name))
                    throw new InvalidDataException($"The model zip names a {what} file '{name}', which is not a plain, new file name; it is corrupt.");
                long length = ctx.Reader.ReadInt64();
                var expected = ctx.Reader.ReadString();
                if (length is < 0 or > MaxFileBytes || expected.Length != 64)
                    throw new InvalidDataException($"The model zip's entry for {what} file '{name}' is corrupt (length {length}).");
                var target = System.IO.Path.Combine(owned, name);
                string? actual = null;
                bool found;
                try { found = ctx.TryLoadBinaryStream(prefix + name, reader => actual = CopyChecked(reader.BaseStream, target, length, name, what)); }
                catch (Exception e) when (e is IOException and not FileNotFoundException and not DirectoryNotFoundException
                    || e is InvalidDataException && e.Source == "System.IO.Compression")
                {
                    // The zip itself is damaged where this file's stream is (a bad entry header, say).
                    throw new InvalidDataException($"The model zip's {what} file '{name}' cannot be read: {e.Message}", e);
                }
                if (!found || actual is null)
                    throw new InvalidDataException($"The model zip lacks the stream of {what} file '{name}'; it is truncated or corrupt.");
                if (actual != expected)
                    throw new InvalidDataException($"The model zip's {what} file '{name}' has SHA-256 {actual}, but {expected} was saved: the zip is damaged.");
                hashes[name] = actual;
            }
            return new StoredFolder(owned, hashes);
        }
        catch
        {
            Remove(owned);
            throw;
        }
    }

    /// <summary>Copies exactly <paramref name="length"/> bytes to <paramref name="target"/>, hashing them; more or fewer is corruption.</summary>
    private static string CopyChecked(Stream source, string target, long length, string name, string what)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[(int)Math.Min(ChunkBytes, Math.Max(length, 1))];
        using (var output = new FileStream(target, FileMode.CreateNew, FileAccess.Write))
        {
            long remaining = length;
            while (remaining > 0)
            {
                int read = source.Read(buffer, 0, (int)Math.Min(buffer.Length, remaining));
                if (read == 0) throw new InvalidDataException($"The model zip's {what} file '{name}' ends after {length - remaining} of its {length} bytes; it is truncated.");
                output.Write(buffer, 0, read);
                sha.AppendData(buffer, 0, read);
                remaining -= read;
            }
        }
        if (source.Read(buffer, 0, 1) != 0) throw new InvalidDataException($"The model zip's {what} file '{name}' is longer than the {length} bytes saved for it; it is corrupt.");
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    internal static string Hash(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }

    private static string NewFolder()
    {
        var folder = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "mlnetpeft-model-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        s_owned[folder] = 0;
        return folder;
    }

    private void Delete()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Remove(Path);
    }

    private static void Remove(string folder)
    {
        try { Directory.Delete(folder, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        s_owned.TryRemove(folder, out _);
    }

    public void Dispose()
    {
        Delete();
        GC.SuppressFinalize(this);
    }
}
