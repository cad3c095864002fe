using Microsoft.ML;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Tokenization;
using MLNetPeft.Tuners;
using MLNetPeft.Tuners.QLora;

namespace MLNetPeft.ML.Persistence;

/// <summary>
/// What a transformer saves of its model (a causal LM, or a sequence classifier such as a reward model): the base checkpoint, embedded in the zip or referenced by folder
/// and SHA-256, and optionally an unmerged adapter in PEFT's adapter format, attached again on load. The embedded
/// files are kept on disk (<see cref="StoredFolder"/>), not in memory, and stream into and out of the zip.
/// </summary>
internal sealed class ModelPackage : IDisposable
{
    /// <summary>Base models up to this size are embedded by <see cref="BaseModelStorage.Auto"/>.</summary>
    public const long EmbedLimitBytes = 100_000_000;
    private const string BaseStreams = "File.", AdapterStreams = "Adapter.";

    private ModelPackage(StoredFolder? baseFiles, BaseModelReference? reference, StoredFolder? adapterFiles)
    {
        BaseFiles = baseFiles;
        BaseReference = reference;
        AdapterFiles = adapterFiles;
    }

    public StoredFolder? BaseFiles { get; }
    public BaseModelReference? BaseReference { get; }
    public StoredFolder? AdapterFiles { get; }
    public BaseModelStorage Storage => BaseReference is null ? BaseModelStorage.Embed : BaseModelStorage.Reference;

    /// <summary>The base checkpoint files in <paramref name="folder"/> (moved, not copied) go into the zip; the adapter files, if any, too.</summary>
    public static ModelPackage Embed(string folder, string? adapterFolder = null) =>
        new(StoredFolder.Take(folder), null, adapterFolder is null ? null : StoredFolder.Take(adapterFolder));

    /// <summary>
    /// Folds the trained method into <paramref name="model"/>'s weights (dequantising a QLoRA base first), saves the
    /// plain model to <paramref name="folder"/> and embeds it.
    /// </summary>
    public static ModelPackage MergeAndEmbed(PretrainedModule model, Nf4Model? quantized, PeftModel? peft, string folder)
    {
        quantized?.Dequantize();
        peft?.MergeAndUnload();
        model.SavePretrained(folder);
        return Embed(folder);
    }

    /// <summary>The zip names <paramref name="reference"/>'s folder; the adapter files, if any, go into it.</summary>
    public static ModelPackage Reference(BaseModelReference reference, string? adapterFolder = null) =>
        new(null, reference, adapterFolder is null ? null : StoredFolder.Take(adapterFolder));

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

    /// <summary>
    /// Writes the base checkpoint (HF folder layout) to <paramref name="folder"/>, and an unmerged adapter, in PEFT's
    /// adapter format, to its <c>adapter</c> subfolder; all into a temporary folder first, renamed when complete.
    /// </summary>
    public void Export(string folder)
    {
        string target = Path.GetFullPath(folder);
        if (Directory.Exists(target) && Directory.EnumerateFileSystemEntries(target).Any())
            throw new IOException($"The export folder '{target}' exists and is not empty.");
        string temp = $"{target}.{Guid.NewGuid():N}.tmp";
        try
        {
            CopyFiles(BaseFiles?.Path ?? BaseReference!.ResolvedFolder, temp);
            if (AdapterFiles is not null) CopyFiles(AdapterFiles.Path, Path.Combine(temp, "adapter"));
            if (Directory.Exists(target)) Directory.Delete(target);
            Directory.Move(temp, target);
        }
        finally
        {
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        }
    }

    private static void CopyFiles(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.EnumerateFiles(from)) File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
    }

    /// <summary>Bytes of the model's weights in memory (what embedding would store, give or take the tokenizer files).</summary>
    public static long WeightBytes(PretrainedModule model) => model.state_dict().Values.Sum(t => t.numel() * t.ElementSize);

    public void Save(ModelSaveContext ctx)
    {
        BaseModelReference.SaveBase(ctx, BaseFiles, BaseReference, BaseStreams);
        ctx.Writer.Write(AdapterFiles is not null);
        AdapterFiles?.Save(ctx, AdapterStreams);
    }

    public static ModelPackage Load(ModelLoadContext ctx)
    {
        var (files, reference) = BaseModelReference.LoadBase(ctx, BaseStreams, "base model");
        try
        {
            var adapter = ctx.Reader.ReadBoolean() ? StoredFolder.Load(ctx, AdapterStreams, "adapter") : null;
            return new ModelPackage(files, reference, adapter);
        }
        catch
        {
            files?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Loads the base model and its tokenizer (checking a referenced folder first) and attaches the adapter, in the
    /// dtype and on the device of <paramref name="options"/> (by default the dtype the checkpoint was saved in, on the CPU).
    /// </summary>
    public (CausalLanguageModel Model, TextTokenizer Tokenizer) LoadModel(ModelLoadOptions? options = null)
    {
        if (BaseReference is { } reference) reference.Verify();
        var folder = BaseReference?.ResolvedFolder ?? BaseFiles!.Path;
        options ??= ModelLoadOptions.AsStored(folder);
        var model = LoadBase(folder, options);
        return WithTokenizerAndAdapter(model, folder);
    }

    /// <summary>
    /// Loads the checkpoint as a sequence classifier (HF's …ForSequenceClassification folder) and its tokenizer, and
    /// attaches the adapter (whose modules_to_save carry the trained head), as <see cref="LoadModel"/> does for a causal LM.
    /// </summary>
    public (SequenceClassificationModel Model, TextTokenizer Tokenizer) LoadSequenceClassifier(SequencePooling? pooling, ModelLoadOptions? options = null)
    {
        if (BaseReference is { } reference) reference.Verify();
        var folder = BaseReference?.ResolvedFolder ?? BaseFiles!.Path;
        var model = PretrainedModels.LoadSequenceClassifier(folder, options ?? ModelLoadOptions.AsStored(folder), pooling);
        return WithTokenizerAndAdapter(model, folder);
    }

    /// <summary>Loads the checkpoint as a BERT encoder (an embedder's) and its tokenizer, with the adapter attached, as <see cref="LoadModel"/> does for a causal LM.</summary>
    public (BertModel Model, TextTokenizer Tokenizer) LoadEncoder(ModelLoadOptions? options = null)
    {
        if (BaseReference is { } reference) reference.Verify();
        var folder = BaseReference?.ResolvedFolder ?? BaseFiles!.Path;
        return WithTokenizerAndAdapter(PretrainedModels.LoadBert(folder, options ?? ModelLoadOptions.AsStored(folder)), folder);
    }

    /// <summary>The model's tokenizer (from its folder) and the adapter attached; the model disposed if either fails.</summary>
    private (T Model, TextTokenizer Tokenizer) WithTokenizerAndAdapter<T>(T model, string folder) where T : PretrainedModule
    {
        try
        {
            var tokenizer = TextTokenizer.FromPretrained(folder);
            if (AdapterFiles is not null)
            {
                PeftAdapterFiles.Load(model, AdapterFiles.Path, out var unused);
                if (unused.Count > 0) throw new InvalidDataException($"The adapter in the model zip has weights no layer takes: {string.Join(", ", unused)}.");
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
    private static CausalLanguageModel LoadBase(string folder, ModelLoadOptions options) =>
        Nf4Checkpoint.IsQuantized(folder) ? Nf4Checkpoint.LoadCausalLM(folder, options).Model : PretrainedModels.LoadCausalLM(folder, options);

    public void Dispose()
    {
        BaseFiles?.Dispose();
        AdapterFiles?.Dispose();
    }
}
