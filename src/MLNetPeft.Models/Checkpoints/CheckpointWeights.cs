using System.Text.Json;
using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace MLNetPeft.Checkpoints;

/// <summary>
/// The weights of a checkpoint folder: a single <c>model.safetensors</c>, or shards listed by
/// <c>model.safetensors.index.json</c> (HF transformers' layout: <c>{"metadata": {...}, "weight_map": {name: file}}</c>).
/// </summary>
public sealed class SafetensorsCheckpoint : IDisposable
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    private readonly Dictionary<string, SafetensorsFile> _fileOfTensor;
    private readonly List<SafetensorsFile> _files;

    private SafetensorsCheckpoint(List<SafetensorsFile> files, Dictionary<string, SafetensorsFile> fileOfTensor)
    {
        _files = files;
        _fileOfTensor = fileOfTensor;
    }

    public IReadOnlyCollection<string> TensorNames => _fileOfTensor.Keys;
    public IReadOnlyList<SafetensorsFile> Files => _files;
    public bool Contains(string name) => _fileOfTensor.ContainsKey(name);
    public SafetensorsTensorInfo Info(string name) => FileOf(name).Info(name);
    public Tensor ReadTensor(string name) => FileOf(name).ReadTensor(name);
    /// <inheritdoc cref="SafetensorsFile.ReadInto"/>
    public void ReadInto(string name, Tensor destination) => FileOf(name).ReadInto(name, destination);

    private SafetensorsFile FileOf(string name) =>
        _fileOfTensor.TryGetValue(name, out var file) ? file
            : throw new KeyNotFoundException($"Tensor '{name}' is not in the checkpoint ({string.Join(", ", _files.Select(f => Path.GetFileName(f.Path)))}).");

    /// <summary>True when <paramref name="folder"/> holds safetensors weights in either layout.</summary>
    public static bool Exists(string folder) =>
        File.Exists(Path.Combine(folder, IndexFileName)) || File.Exists(Path.Combine(folder, SingleFileName));

    /// <summary>Opens the weights of <paramref name="folder"/>, preferring the shard index when present.</summary>
    public static SafetensorsCheckpoint Open(string folder)
    {
        var index = Path.Combine(folder, IndexFileName);
        if (File.Exists(index)) return OpenSharded(index);
        var single = Path.Combine(folder, SingleFileName);
        if (!File.Exists(single))
            throw new FileNotFoundException($"Checkpoint folder '{Path.GetFullPath(folder)}' has neither {SingleFileName} nor {IndexFileName}.", single);
        var file = SafetensorsFile.Open(single);
        return new SafetensorsCheckpoint([file], file.Tensors.ToDictionary(t => t.Name, _ => file, StringComparer.Ordinal));
    }

    private static SafetensorsCheckpoint OpenSharded(string indexPath)
    {
        var folder = Path.GetDirectoryName(Path.GetFullPath(indexPath))!;
        var weightMap = ReadWeightMap(indexPath);
        var files = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        var fileOfTensor = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        try
        {
            foreach (var (tensor, shard) in weightMap)
            {
                if (!files.TryGetValue(shard, out var file))
                {
                    var shardPath = Path.Combine(folder, shard);
                    if (!File.Exists(shardPath))
                        throw new InvalidDataException($"Shard index '{indexPath}' lists '{shard}', which does not exist.");
                    files[shard] = file = SafetensorsFile.Open(shardPath);
                }
                if (!file.Contains(tensor))
                    throw new InvalidDataException($"Shard index '{indexPath}' places tensor '{tensor}' in '{shard}', which does not contain it.");
                fileOfTensor[tensor] = file;
            }
            return new SafetensorsCheckpoint(files.Values.ToList(), fileOfTensor);
        }
        catch
        {
            foreach (var f in files.Values) f.Dispose();
            throw;
        }
    }

    private static Dictionary<string, string> ReadWeightMap(string indexPath)
    {
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(indexPath)); }
        catch (JsonException e) { throw new InvalidDataException($"Shard index '{indexPath}' is not well-formed JSON ({e.Message}).", e); }
        if (root?["weight_map"] is not JsonObject map)
            throw new InvalidDataException($"Shard index '{indexPath}' has no 'weight_map' object.");
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (tensor, value) in map)
        {
            if (value is not JsonValue v || !v.TryGetValue<string>(out var shard))
                throw new InvalidDataException($"Shard index '{indexPath}' maps '{tensor}' to something other than a file name.");
            // A shard must be a plain file beside the index: no folders, no way out of the checkpoint.
            if (shard.Length == 0 || shard != Path.GetFileName(shard) || shard is "." or ".." || shard.Contains('\\'))
                throw new InvalidDataException($"Shard index '{indexPath}' names shard '{shard}', which is not a plain file name.");
            result[tensor] = shard;
        }
        return result;
    }

    /// <summary>
    /// Saves tensors into <paramref name="folder"/>: one <c>model.safetensors</c> when they fit in
    /// <paramref name="maxShardBytes"/>, else shards <c>model-0000i-of-0000n.safetensors</c> plus the index.
    /// Stale weight files of the other layout are removed so that the folder is unambiguous.
    /// </summary>
    public static void Save(string folder, IReadOnlyDictionary<string, Tensor> tensors, long maxShardBytes = long.MaxValue,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (maxShardBytes <= 0) throw new ArgumentOutOfRangeException(nameof(maxShardBytes), "must be positive");
        Directory.CreateDirectory(folder);
        metadata ??= new Dictionary<string, string> { ["format"] = "pt" };
        var shards = new List<List<KeyValuePair<string, Tensor>>> { new() };
        long current = 0;
        foreach (var kv in tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            long bytes = kv.Value.NumberOfElements * kv.Value.ElementSize;
            if (current > 0 && current + bytes > maxShardBytes) { shards.Add(new()); current = 0; }
            shards[^1].Add(kv);
            current += bytes;
        }

        var oldShards = Directory.GetFiles(folder, "model-*-of-*.safetensors");
        if (shards.Count == 1)
        {
            SafetensorsWriter.Save(Path.Combine(folder, SingleFileName), shards[0], metadata);
            File.Delete(Path.Combine(folder, IndexFileName));
            foreach (var old in oldShards) File.Delete(old);
            return;
        }

        var weightMap = new JsonObject();
        var written = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < shards.Count; i++)
        {
            var name = $"model-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
            SafetensorsWriter.Save(Path.Combine(folder, name), shards[i], metadata);
            written.Add(name);
            foreach (var kv in shards[i]) weightMap[kv.Key] = name;
        }
        var index = new JsonObject
        {
            ["metadata"] = new JsonObject { ["total_size"] = SafetensorsWriter.DataBytes(tensors.Values) },
            ["weight_map"] = weightMap,
        };
        // The index goes last: until it is renamed into place, readers still see the previous checkpoint's index or file.
        AtomicFile.WriteAllText(Path.Combine(folder, IndexFileName), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        File.Delete(Path.Combine(folder, SingleFileName));
        foreach (var old in oldShards.Where(o => !written.Contains(Path.GetFileName(o)))) File.Delete(old);
    }

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
    }
}
