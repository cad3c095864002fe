using System.Text.Json;
using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace MLNetPeft.Checkpoints;

/// <summary>
/// The weights of a checkpoint folder in HF transformers' layouts: a single <c>model.safetensors</c>, or shards listed
/// by <c>model.safetensors.index.json</c> (<c>{"metadata": {...}, "weight_map": {name: file}}</c>); failing those,
/// PyTorch's <c>pytorch_model.bin</c> or its shards (<c>pytorch_model.bin.index.json</c>), read weights-only.
/// </summary>
public sealed class CheckpointWeights : ITensorReader
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";
    public const string PyTorchFileName = "pytorch_model.bin";
    public const string PyTorchIndexFileName = "pytorch_model.bin.index.json";

    private readonly Dictionary<string, ITensorReader> _fileOfTensor;
    private readonly List<ITensorReader> _files;

    private CheckpointWeights(string source, List<ITensorReader> files, Dictionary<string, ITensorReader> fileOfTensor)
    {
        Source = source;
        _files = files;
        _fileOfTensor = fileOfTensor;
    }

    public string Source { get; }
    public IReadOnlyCollection<string> TensorNames => _fileOfTensor.Keys;
    public bool Contains(string name) => _fileOfTensor.ContainsKey(name);
    public long[] ShapeOf(string name) => FileOf(name).ShapeOf(name);
    public ScalarType DTypeOf(string name) => FileOf(name).DTypeOf(name);
    public Tensor ReadTensor(string name) => FileOf(name).ReadTensor(name);
    /// <inheritdoc cref="SafetensorsFile.ReadInto"/>
    public void ReadInto(string name, Tensor destination) => FileOf(name).ReadInto(name, destination);

    private ITensorReader FileOf(string name) =>
        _fileOfTensor.TryGetValue(name, out var file) ? file
            : throw new KeyNotFoundException($"Tensor '{name}' is not in the checkpoint ({string.Join(", ", _files.Select(f => Path.GetFileName(f.Source)))}).");

    /// <summary>True when <paramref name="folder"/> holds weights in one of the layouts.</summary>
    public static bool Exists(string folder) =>
        new[] { IndexFileName, SingleFileName, PyTorchIndexFileName, PyTorchFileName }.Any(f => File.Exists(Path.Combine(folder, f)));

    /// <summary>Opens the weights of <paramref name="folder"/>: safetensors first (shard index, then single file), then PyTorch's.</summary>
    public static CheckpointWeights Open(string folder)
    {
        foreach (var (index, single) in new[] { (IndexFileName, SingleFileName), (PyTorchIndexFileName, PyTorchFileName) })
        {
            var indexPath = Path.Combine(folder, index);
            if (File.Exists(indexPath)) return OpenSharded(indexPath);
            var singlePath = Path.Combine(folder, single);
            if (File.Exists(singlePath))
            {
                var file = OpenFile(singlePath);
                return new CheckpointWeights(file.Source, [file], file.TensorNames.ToDictionary(t => t, _ => file, StringComparer.Ordinal));
            }
        }
        throw new FileNotFoundException($"Checkpoint folder '{Path.GetFullPath(folder)}' has none of {SingleFileName}, {IndexFileName}, {PyTorchFileName} or {PyTorchIndexFileName}.",
            Path.Combine(folder, SingleFileName));
    }

    /// <summary>One weights file: safetensors by its extension, otherwise torch.save's zip format (read weights-only).</summary>
    public static ITensorReader OpenFile(string path) =>
        path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) ? SafetensorsFile.Open(path) : TorchCheckpointFile.Open(path);

    private static CheckpointWeights OpenSharded(string indexPath)
    {
        var folder = Path.GetDirectoryName(Path.GetFullPath(indexPath))!;
        var weightMap = ReadWeightMap(indexPath);
        var files = new Dictionary<string, ITensorReader>(StringComparer.Ordinal);
        var fileOfTensor = new Dictionary<string, ITensorReader>(StringComparer.Ordinal);
        try
        {
            foreach (var (tensor, shard) in weightMap)
            {
                if (!files.TryGetValue(shard, out var file))
                {
                    var shardPath = Path.Combine(folder, shard);
                    if (!File.Exists(shardPath))
                        throw new InvalidDataException($"Shard index '{indexPath}' lists '{shard}', which does not exist.");
                    files[shard] = file = OpenFile(shardPath);
                }
                if (!file.Contains(tensor))
                    throw new InvalidDataException($"Shard index '{indexPath}' places tensor '{tensor}' in '{shard}', which does not contain it.");
                fileOfTensor[tensor] = file;
            }
            return new CheckpointWeights(folder, files.Values.ToList(), fileOfTensor);
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
