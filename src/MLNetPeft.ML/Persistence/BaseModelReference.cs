using System.Security.Cryptography;
using MLNetPeft.Architectures;

namespace MLNetPeft.ML.Persistence;

/// <summary>
/// A checkpoint folder named by path and pinned by the SHA-256 of each file a model load reads (config, weights,
/// shard index, tokenizer files), so that a saved transformer can refer to a large base model instead of embedding it.
/// </summary>
internal sealed record BaseModelReference(string Folder, IReadOnlyDictionary<string, string> Sha256)
{
    /// <summary>The files of <paramref name="folder"/> that loading a model and its tokenizer reads.</summary>
    public static IReadOnlyList<string> CheckpointFiles(string folder) =>
        Directory.GetFiles(folder).Select(Path.GetFileName).OfType<string>()
            .Where(name => name == "config.json" || name.EndsWith(".safetensors", StringComparison.Ordinal)
                || name.EndsWith(".safetensors.index.json", StringComparison.Ordinal) || PretrainedModule.CompanionFiles.Contains(name))
            .Order(StringComparer.Ordinal).ToList();

    public static BaseModelReference Of(string folder)
    {
        var full = Path.GetFullPath(folder);
        return new BaseModelReference(full, CheckpointFiles(full).ToDictionary(name => name, name => Hash(Path.Combine(full, name)), StringComparer.Ordinal));
    }

    public long TotalBytes => Sha256.Keys.Sum(name => new FileInfo(Path.Combine(Folder, name)).Length);

    /// <summary>Throws when the folder or one of its files is missing or changed since the reference was made.</summary>
    public void Verify()
    {
        if (!Directory.Exists(Folder))
            throw new DirectoryNotFoundException($"The model zip refers to the base model folder '{Folder}', which does not exist on this machine. " +
                "Copy the checkpoint there, or save the transformer with BaseModelStorage.Embed.");
        foreach (var (name, expected) in Sha256)
        {
            var path = Path.Combine(Folder, name);
            if (!File.Exists(path))
                throw new FileNotFoundException($"The base model folder '{Folder}' lacks '{name}', which the model zip expects (SHA-256 {expected}).", path);
            var actual = Hash(path);
            if (actual != expected)
                throw new InvalidDataException($"The base model file '{path}' has SHA-256 {actual}, but the model zip was saved against {expected}: " +
                    "the base model is a different one or was changed since. Restore the original checkpoint.");
        }
    }

    private static string Hash(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }
}
