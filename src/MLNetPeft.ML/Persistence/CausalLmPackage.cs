using Microsoft.ML;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Tokenization;
using MLNetPeft.Tuners;
using MLNetPeft.Tuners.QLora;

namespace MLNetPeft.ML.Persistence;

/// <summary>
/// What a transformer saves of its language model: the base checkpoint, embedded in the zip or referenced by folder
/// and SHA-256, and optionally an unmerged adapter in PEFT's adapter format, attached again on load.
/// </summary>
internal sealed class CausalLmPackage
{
    /// <summary>Base models up to this size are embedded by <see cref="BaseModelStorage.Auto"/>.</summary>
    public const long EmbedLimitBytes = 100_000_000;
    private const string BaseStreams = "File.", AdapterStreams = "Adapter.";
    private const byte Embedded = 0, Referenced = 1;

    private CausalLmPackage(IReadOnlyDictionary<string, byte[]>? baseFiles, BaseModelReference? reference, IReadOnlyDictionary<string, byte[]>? adapterFiles)
    {
        BaseFiles = baseFiles;
        BaseReference = reference;
        AdapterFiles = adapterFiles;
    }

    public IReadOnlyDictionary<string, byte[]>? BaseFiles { get; }
    public BaseModelReference? BaseReference { get; }
    public IReadOnlyDictionary<string, byte[]>? AdapterFiles { get; }
    public BaseModelStorage Storage => BaseReference is null ? BaseModelStorage.Embed : BaseModelStorage.Reference;

    /// <summary>The base checkpoint files in <paramref name="folder"/> go into the zip; the adapter files, if any, too.</summary>
    public static CausalLmPackage Embed(string folder, string? adapterFolder = null) =>
        new(ModelFiles.Capture(folder), null, adapterFolder is null ? null : ModelFiles.Capture(adapterFolder));

    /// <summary>The zip names <paramref name="reference"/>'s folder; the adapter files, if any, go into it.</summary>
    public static CausalLmPackage Reference(BaseModelReference reference, string? adapterFolder = null) =>
        new(null, reference, adapterFolder is null ? null : ModelFiles.Capture(adapterFolder));

    /// <summary>
    /// Turns <paramref name="requested"/> into Embed or Reference for a base of <paramref name="baseBytes"/> bytes:
    /// a reference is only possible while the base weights stay as loaded (<paramref name="baseUnchanged"/>).
    /// </summary>
    public static BaseModelStorage Resolve(BaseModelStorage requested, long baseBytes, bool baseUnchanged, IChannel ch)
    {
        switch (requested)
        {
            case BaseModelStorage.Embed:
                return BaseModelStorage.Embed;
            case BaseModelStorage.Reference when !baseUnchanged:
                throw new ArgumentException("BaseModelStorage.Reference keeps the base model outside the zip, so its weights must stay as loaded; " +
                    "full fine-tuning and merged adapters change them. Use LoRA with MergeAdapter = false, or BaseModelStorage.Embed.", "BaseModelStorage");
            case BaseModelStorage.Reference:
                return BaseModelStorage.Reference;
            case BaseModelStorage.Auto:
                if (baseBytes <= EmbedLimitBytes) return BaseModelStorage.Embed;
                if (baseUnchanged) return BaseModelStorage.Reference;
                ch.Warning($"The tuned model ({baseBytes / 1e6:F0} MB) is embedded in the model zip because its weights differ from the base model's.");
                return BaseModelStorage.Embed;
            default:
                throw new ArgumentOutOfRangeException(nameof(requested), requested, "not a BaseModelStorage value");
        }
    }

    /// <summary>Bytes of the model's weights in memory (what embedding would store, give or take the tokenizer files).</summary>
    public static long WeightBytes(PretrainedModule model) => model.state_dict().Values.Sum(t => t.numel() * t.ElementSize);

    public void Save(ModelSaveContext ctx)
    {
        if (BaseReference is { } reference)
        {
            ctx.Writer.Write(Referenced);
            ctx.Writer.Write(reference.Folder);
            ctx.Writer.Write(reference.Sha256.Count);
            foreach (var (name, hash) in reference.Sha256)
            {
                ctx.Writer.Write(name);
                ctx.Writer.Write(hash);
            }
        }
        else
        {
            ctx.Writer.Write(Embedded);
            ModelFiles.Save(ctx, BaseFiles!, BaseStreams);
        }
        ctx.Writer.Write(AdapterFiles is not null);
        if (AdapterFiles is not null) ModelFiles.Save(ctx, AdapterFiles, AdapterStreams);
    }

    public static CausalLmPackage Load(ModelLoadContext ctx)
    {
        byte kind = ctx.Reader.ReadByte();
        IReadOnlyDictionary<string, byte[]>? files = null;
        BaseModelReference? reference = null;
        if (kind == Embedded)
        {
            files = ModelFiles.Load(ctx, BaseStreams);
        }
        else if (kind == Referenced)
        {
            var folder = ctx.Reader.ReadString();
            int count = ctx.Reader.ReadInt32();
            if (count is <= 0 or > 10_000) throw new InvalidDataException($"The model zip lists {count} base model files; it is corrupt.");
            var hashes = new Dictionary<string, string>(StringComparer.Ordinal);
            for (int i = 0; i < count; i++)
            {
                var name = ctx.Reader.ReadString();
                if (name.Length == 0 || name != Path.GetFileName(name))
                    throw new InvalidDataException($"The model zip names a base model file '{name}', which is not a plain file name.");
                hashes[name] = ctx.Reader.ReadString();
            }
            reference = new BaseModelReference(folder, hashes);
        }
        else
        {
            throw new InvalidDataException($"The model zip stores its base model in an unknown way ({kind}); it is corrupt or from a newer version.");
        }
        var adapter = ctx.Reader.ReadBoolean() ? ModelFiles.Load(ctx, AdapterStreams) : null;
        return new CausalLmPackage(files, reference, adapter);
    }

    /// <summary>Loads the base model and its tokenizer (checking a referenced folder first) and attaches the adapter.</summary>
    public (CausalLanguageModel Model, TextTokenizer Tokenizer) LoadModel()
    {
        var (model, tokenizer) = BaseReference is { } reference
            ? LoadReferenced(reference)
            : ModelFiles.WithFolder(BaseFiles!, folder => (LoadBase(folder), TextTokenizer.FromPretrained(folder)));
        try
        {
            if (AdapterFiles is not null)
            {
                ModelFiles.WithFolder(AdapterFiles, folder =>
                {
                    PeftAdapterFiles.Load(model, folder, out var unused);
                    if (unused.Count > 0) throw new InvalidDataException($"The adapter in the model zip has weights no layer takes: {string.Join(", ", unused)}.");
                    return 0;
                });
            }
            model.eval();
            return (model, tokenizer);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>A base checkpoint, NF4-quantised (QLoRA) or not.</summary>
    private static CausalLanguageModel LoadBase(string folder) =>
        Nf4Checkpoint.IsQuantized(folder) ? Nf4Checkpoint.LoadCausalLM(folder).Model : PretrainedModels.LoadCausalLM(folder);

    private static (CausalLanguageModel, TextTokenizer) LoadReferenced(BaseModelReference reference)
    {
        reference.Verify();
        return (PretrainedModels.LoadCausalLM(reference.Folder), TextTokenizer.FromPretrained(reference.Folder));
    }
}
