using Microsoft.ML;
using MLNetPeft.Architectures;
using MLNetPeft.Checkpoints;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Tokenization;
using MLNetPeft.Tuners;
using MLNetPeft.Tuners.QLora;
using static TorchSharp.torch;

namespace MLNetPeft.ML.Classification;

/// <summary>
/// What a text classifier saves: its encoder (embedded, or referred to: the bundled MiniLM by package version and
/// SHA-256, another encoder by folder), its head, and an adapter kept apart (PEFT's format). Embedded parts are files
/// on disk (<see cref="StoredFolder"/>) that stream into and out of the model zip.
/// </summary>
internal sealed class ClassifierParts(StoredFolder? encoder, BaseModelReference? reference, StoredFolder head, StoredFolder? adapter) : IDisposable
{
    public StoredFolder? Encoder { get; } = encoder;
    public BaseModelReference? BaseReference { get; } = reference;
    public StoredFolder Head { get; } = head;
    public StoredFolder? Adapter { get; } = adapter;

    public void Save(ModelSaveContext ctx)
    {
        BaseModelReference.SaveBase(ctx, Encoder, BaseReference, "File.");
        Head.Save(ctx, "Head.");
        ctx.Writer.Write(Adapter is not null);
        Adapter?.Save(ctx, "Adapter.");
    }

    public static ClassifierParts Load(ModelLoadContext ctx)
    {
        var (encoder, reference) = BaseModelReference.LoadBase(ctx, "File.", "encoder");
        StoredFolder? head = null, adapter = null;
        try
        {
            head = StoredFolder.Load(ctx, "Head.", "classification head");
            adapter = ctx.Reader.ReadBoolean() ? StoredFolder.Load(ctx, "Adapter.", "adapter") : null;
            return new ClassifierParts(encoder, reference, head, adapter);
        }
        catch
        {
            encoder?.Dispose();
            head?.Dispose();
            adapter?.Dispose();
            throw;
        }
    }

    /// <summary>Builds the classifier from its parts, in <paramref name="options"/>' dtype and device (by default as stored, on the CPU).</summary>
    public (BertForSequenceClassification Model, TextTokenizer Tokenizer) Assemble(int classes, SequencePooling pooling, ModelLoadOptions? options = null)
    {
        BaseReference?.Verify();
        var folder = BaseReference?.ResolvedFolder ?? Encoder!.Path;
        options ??= ModelLoadOptions.AsStored(folder);
        // A QLoRA classifier keeps its encoder NF4-quantised (its adapter was trained over exactly those weights).
        var bert = Nf4Checkpoint.IsQuantized(folder) ? Nf4Checkpoint.LoadBert(folder, options).Model : PretrainedModels.LoadBert(folder, options);
        var tokenizer = TextTokenizer.FromPretrained(folder);
        var model = new BertForSequenceClassification(bert, classes, pooling);
        try
        {
            using (var file = SafetensorsFile.Open(Path.Combine(Head.Path, PeftTextClassificationTransformer.HeadFileName)))
            {
                using var _ = no_grad();
                foreach (var (name, p) in model.named_parameters().Where(p => p.name.StartsWith("classifier.", StringComparison.Ordinal)))
                {
                    if (!file.Contains(name) || !file.Info(name).Shape.SequenceEqual(p.shape))
                        throw new InvalidDataException($"The model zip's classification head lacks '{name}' of shape [{string.Join(", ", p.shape)}]; it is corrupt.");
                    file.ReadInto(name, p);
                }
            }
            if (Adapter is not null) PeftAdapterFiles.Load(model, Adapter.Path, out _);
            model.eval();
            return (model, tokenizer);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        Encoder?.Dispose();
        Head.Dispose();
        Adapter?.Dispose();
    }
}
