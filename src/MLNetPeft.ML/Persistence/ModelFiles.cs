using Microsoft.ML;

namespace MLNetPeft.ML.Persistence;

/// <summary>
/// Stores the files of a checkpoint folder (config.json, safetensors weights, tokenizer files) inside an ML.NET model
/// zip, one binary stream per file, and restores them. Only safetensors and JSON/text files are ever stored or read;
/// nothing is deserialized as code.
/// </summary>
internal static class ModelFiles
{
    /// <summary>A transformer saves its model's tokenizer files, which are known only for models loaded from a checkpoint folder.</summary>
    public static void RequireCheckpointFolder(MLNetPeft.Architectures.PretrainedModule model)
    {
        if (model.SourceFolder is null)
            throw new InvalidOperationException("The model was not loaded from a checkpoint folder, so its tokenizer files are unknown; " +
                "save it with SavePretrained next to its tokenizer files and load it with PretrainedModels.LoadCausalLM.");
    }

    /// <summary>
    /// A saved model reads its tokenizer from the checkpoint's files, so the tokenizer given must agree with them on
    /// <paramref name="samples"/>; otherwise a reloaded model would see other token ids than it was trained or run on.
    /// </summary>
    public static void CheckTokenizerMatchesCheckpoint(MLNetPeft.Architectures.PretrainedModule model, MLNetPeft.Tokenization.TextTokenizer tokenizer, IEnumerable<string> samples)
    {
        var saved = MLNetPeft.Tokenization.TextTokenizer.FromPretrained(model.SourceFolder!);
        foreach (var text in samples.Take(16))
            if (!saved.Encode(text).SequenceEqual(tokenizer.Encode(text)))
                throw new ArgumentException($"The tokenizer given encodes '{text}' differently from the tokenizer files in '{model.SourceFolder}', " +
                    "which a saved model uses; pass TextTokenizer.FromPretrained of the model's folder.", nameof(tokenizer));
    }

    /// <summary>Reads every file of <paramref name="folder"/> into memory (so the transformer can be saved again later).</summary>
    public static IReadOnlyDictionary<string, byte[]> Capture(string folder) =>
        Directory.GetFiles(folder).Order(StringComparer.Ordinal).ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes, StringComparer.Ordinal);

    /// <summary>Writes the file names to the model stream and each file as a binary stream named <paramref name="streamPrefix"/> + name.</summary>
    public static void Save(ModelSaveContext ctx, IReadOnlyDictionary<string, byte[]> files, string streamPrefix)
    {
        ctx.Writer.Write(files.Count);
        foreach (var (name, bytes) in files)
        {
            ctx.Writer.Write(name);
            ctx.SaveBinaryStream(streamPrefix + name, w => w.Write(bytes));
        }
    }

    public static IReadOnlyDictionary<string, byte[]> Load(ModelLoadContext ctx, string streamPrefix)
    {
        int count = ctx.Reader.ReadInt32();
        if (count is < 0 or > 10_000) throw new InvalidDataException($"The model zip lists {count} checkpoint files; it is corrupt.");
        var files = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        for (int i = 0; i < count; i++)
        {
            var name = ctx.Reader.ReadString();
            if (name.Length == 0 || name != Path.GetFileName(name))
                throw new InvalidDataException($"The model zip names a checkpoint file '{name}', which is not a plain file name.");
            byte[]? bytes = null;
            if (!ctx.TryLoadBinaryStream(streamPrefix + name, r => bytes = r.ReadBytes(checked((int)r.BaseStream.Length))) || bytes is null)
                throw new InvalidDataException($"The model zip lacks the stream of checkpoint file '{name}'; it is truncated or corrupt.");
            files[name] = bytes;
        }
        return files;
    }

    /// <summary>Writes <paramref name="files"/> into a new temporary folder, runs <paramref name="use"/> on it, and deletes it.</summary>
    public static T WithFolder<T>(IReadOnlyDictionary<string, byte[]> files, Func<string, T> use) =>
        WithTempFolder(folder =>
        {
            foreach (var (name, bytes) in files) File.WriteAllBytes(Path.Combine(folder, name), bytes);
            return use(folder);
        });

    /// <summary>Runs <paramref name="use"/> on a new, empty temporary folder and deletes the folder afterwards.</summary>
    public static T WithTempFolder<T>(Func<string, T> use)
    {
        var folder = Path.Combine(Path.GetTempPath(), "mlnetpeft-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        try
        {
            return use(folder);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
