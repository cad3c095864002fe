using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Checkpoints;
using MLNetPeft.MiniLM;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Tokenization;
using MLNetPeft.Training;
using MLNetPeft.Training.Classification;
using MLNetPeft.Tuners;
using MLNetPeft.Tuners.QLora;

namespace MLNetPeft.ML.Classification;

/// <summary>
/// Fine-tunes a BERT encoder (all-MiniLM-L6-v2 unless another is given) with a classification head on one text
/// column or a pair, with LoRA (the default), full fine-tuning or another PEFT method; multiclass (key label) or
/// binary (Boolean label). The encoder given is not changed: fitting works on a copy.
/// </summary>
public sealed class PeftTextClassificationEstimator : IEstimator<PeftTextClassificationTransformer>
{
    private readonly IHostEnvironment _env;
    private readonly PeftTextClassificationOptions _options;
    private readonly bool _binary;

    internal PeftTextClassificationEstimator(IHostEnvironment env, PeftTextClassificationOptions options, bool binary)
    {
        _env = env;
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _binary = binary;
        options.Validate();
    }

    private IEnumerable<string> TextColumns => _options.Sentence2ColumnName is { } second ? [_options.Sentence1ColumnName, second] : [_options.Sentence1ColumnName];

    public SchemaShape GetOutputSchema(SchemaShape inputSchema) =>
        ClassifierColumns.OutputShape(_env, inputSchema, TextColumns, _options.LabelColumnName, _binary, _options.ScoreColumnName,
            _options.PredictedLabelColumnName, _options.ProbabilityColumnName);

    public PeftTextClassificationTransformer Fit(IDataView input)
    {
        var o = _options;
        GetOutputSchema(SchemaShape.Create(input.Schema));
        if (o.ValidationSet is not null) GetOutputSchema(SchemaShape.Create(o.ValidationSet.Schema));
        int classes = _binary ? 2 : checked((int)input.Schema[o.LabelColumnName].Type.GetKeyCount());
        if (classes < 2) throw new ArgumentException($"Label column '{o.LabelColumnName}' has {classes} key value(s); a classifier needs at least two.", nameof(input));
        var keyValues = _binary ? null : ClassifierColumns.KeyValues(input.Schema[o.LabelColumnName]);
        using var ch = _env.Start("Text classification");

        var encoder = o.BaseModel ?? AllMiniLmL6V2.Load();
        var tokenizer = o.Tokenizer ?? AllMiniLmL6V2.LoadTokenizer();
        try
        {
            ModelFiles.RequireCheckpointFolder(encoder);
            var train = ReadExamples(input, tokenizer, "training", ch);
            var validation = o.ValidationSet is null ? null : ReadExamples(o.ValidationSet, tokenizer, "validation", ch);
            var pooling = o.Pooling ?? (encoder.HasPooler ? SequencePooling.Cls : SequencePooling.Mean);
            int steps = SequenceClassifierTrainer.StepsFor(train.Count, o.BatchSize, o.MaxEpochs);
            if (o.Method == FineTuningMethod.AdaLora) o.AdaLora.TotalStep ??= steps;
            bool keepAdapter = o.Method != FineTuningMethod.Full && (!o.MergeAdapter || PeftMethods.CannotMerge(o.Method));
            bool encoderUnchanged = keepAdapter && o.Method != FineTuningMethod.QLora;
            var storage = o.BaseModelStorage == BaseModelStorage.Auto && o.BaseModel is null && encoderUnchanged
                ? BaseModelStorage.Reference   // the bundled encoder is on every machine that has the package: refer to it
                : ModelPackage.Resolve(o.BaseModelStorage, ModelPackage.WeightBytes(encoder), encoderUnchanged, ch);
            var like = ModelLoadOptions.Like(encoder);
            var placement = new ModelLoadOptions { DType = o.DType ?? like.DType, Device = o.Device ?? like.Device };
            return ModelFiles.WithTempFolder(work =>
            {
                var baseFolder = Path.Combine(work, "base");
                encoder.SavePretrained(baseFolder);
                var reference = storage == BaseModelStorage.Reference
                    ? (o.BaseModel is null ? BaseModelReference.OfBundledMiniLm() : BaseModelReference.Of(encoder.SourceFolder!))
                    : null;
                using var model = new BertForSequenceClassification(PretrainedModels.LoadBert(baseFolder, placement), classes, pooling, o.Seed);
                Nf4Model? quantized = null;
                if (o.Method == FineTuningMethod.QLora)
                {
                    // The encoder is quantised, never the new head; a kept adapter is stored over the quantised encoder.
                    quantized = PeftMethods.Quantize(model.Bert, o.Quantization, ch);
                    if (keepAdapter)
                    {
                        baseFolder = Path.Combine(work, "quantized-base");
                        Nf4Checkpoint.Save(baseFolder, model.Bert, quantized);
                    }
                }
                var peft = PeftMethods.Apply(o.Method, model, o, tokenizer, o.Seed);
                // The head is new: it always trains (PEFT's modules_to_save for sequence classification).
                foreach (var (name, p) in model.named_parameters().Where(p => p.name.StartsWith("classifier.", StringComparison.Ordinal))) p.requires_grad = true;
                var (trainable, total) = (model.parameters().Where(p => p.requires_grad).Sum(p => p.numel()), model.parameters().Sum(p => p.numel()));
                ch.Info($"{o.Method}: {trainable:N0} of {total:N0} parameters train ({100.0 * trainable / total:F2} %); {train.Count} rows, {classes} classes, {steps} steps.");
                var training = new TrainingOptions
                {
                    MaxSteps = steps, BatchSize = o.BatchSize, LearningRate = o.EffectiveLearningRate, WarmupSteps = Math.Max(1, steps / 16),
                    WeightDecay = 0.01, Seed = o.Seed, EvalInterval = o.EvalInterval,
                };
                var result = new SequenceClassifierTrainer(model, training, peft as ITrainingStepHook) { GroupByLength = o.GroupByLength }.Train(train, validation, o.Progress, o.CancellationToken);
                ch.Info($"Final training loss {result.FinalLoss:F4}" + (result.ValidationLoss is { } v ? $"; validation loss {v:F4}." : "."));

                var headFolder = Path.Combine(work, "head");
                Directory.CreateDirectory(headFolder);
                SafetensorsWriter.Save(Path.Combine(headFolder, PeftTextClassificationTransformer.HeadFileName),
                    model.named_parameters().Where(p => p.name.StartsWith("classifier.", StringComparison.Ordinal)).ToDictionary(p => p.name, p => (TorchSharp.torch.Tensor)p.parameter));
                string? adapterFolder = null;
                if (keepAdapter)
                {
                    adapterFolder = Path.Combine(work, "adapter");
                    PeftAdapterFiles.Save(adapterFolder, peft!, taskType: "SEQ_CLS");
                }
                else
                {
                    quantized?.Dequantize();
                    peft?.MergeAndUnload();
                    baseFolder = Path.Combine(work, "tuned");
                    model.Bert.SavePretrained(baseFolder);
                }
                var parts = new ClassifierParts(reference is null ? StoredFolder.Take(baseFolder) : null, reference, StoredFolder.Take(headFolder),
                    adapterFolder is null ? null : StoredFolder.Take(adapterFolder));
                try
                {
                    // The transformer runs exactly what the zip holds.
                    var (assembled, assembledTokenizer) = parts.Assemble(classes, pooling, placement);
                    return new PeftTextClassificationTransformer(_env, assembled, assembledTokenizer, parts, _binary,
                        o.Sentence1ColumnName, o.Sentence2ColumnName, o.ScoreColumnName, o.PredictedLabelColumnName, o.ProbabilityColumnName, o.MaxSequenceLength, keyValues)
                    { TrainedParameters = trainable };
                }
                catch
                {
                    parts.Dispose();
                    throw;
                }
            });
        }
        finally
        {
            if (o.BaseModel is null) encoder.Dispose();
        }
    }

    private List<ClassificationExample> ReadExamples(IDataView data, TextTokenizer tokenizer, string what, IChannel ch)
    {
        var o = _options;
        var first = data.GetColumn<string>(o.Sentence1ColumnName).ToList();
        var second = o.Sentence2ColumnName is { } name ? data.GetColumn<string>(name).ToList() : null;
        var labels = _binary
            ? data.GetColumn<bool>(o.LabelColumnName).Select(b => b ? 1 : 0).ToList()
            : data.GetColumn<uint>(o.LabelColumnName).Select(k => (int)k - 1).ToList();   // keys count from 1; 0 is missing
        if (first.Count == 0) throw new ArgumentException($"The {what} data view has no rows.", what + "Data");
        var examples = new List<ClassificationExample>(first.Count);
        int missingLabel = 0, emptyText = 0;
        for (int row = 0; row < first.Count; row++)
        {
            if (labels[row] < 0) { missingLabel++; continue; }
            if (string.IsNullOrWhiteSpace(first[row]) || (second is not null && string.IsNullOrWhiteSpace(second[row]))) { emptyText++; continue; }
            examples.Add(PeftTextClassificationTransformer.Encode(tokenizer, first[row], second?[row], o.MaxSequenceLength, labels[row]));
        }
        if (missingLabel > 0) ch.Warning($"{missingLabel} {what} row(s) with a missing label were skipped.");
        if (emptyText > 0) ch.Warning($"{emptyText} {what} row(s) with empty text were skipped.");
        if (examples.Count == 0) throw new ArgumentException($"No {what} row has both a label and text.", what + "Data");
        return examples;
    }
}

/// <summary>
/// Catalog entry points, named after ML.NET's <c>TextClassification</c> trainer:
/// <c>mlContext.MulticlassClassification.Trainers.PeftTextClassification(...)</c> and
/// <c>mlContext.BinaryClassification.Trainers.PeftTextClassification(...)</c>.
/// </summary>
public static class PeftTextClassificationCatalog
{
    public static PeftTextClassificationEstimator PeftTextClassification(this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        PeftTextClassificationOptions options) => new(CatalogUtils.GetEnvironment(catalog), options, binary: false);

    /// <summary>LoRA on all-MiniLM-L6-v2 with the given columns (ML.NET's TextClassification parameters).</summary>
    public static PeftTextClassificationEstimator PeftTextClassification(this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        string labelColumnName = "Label", string sentence1ColumnName = "Sentence1", string scoreColumnName = "Score",
        string predictedLabelColumnName = "PredictedLabel", string? sentence2ColumnName = null, int batchSize = 32, int maxEpochs = 10) =>
        catalog.PeftTextClassification(new PeftTextClassificationOptions
        {
            LabelColumnName = labelColumnName, Sentence1ColumnName = sentence1ColumnName, ScoreColumnName = scoreColumnName,
            PredictedLabelColumnName = predictedLabelColumnName, Sentence2ColumnName = sentence2ColumnName, BatchSize = batchSize, MaxEpochs = maxEpochs,
        });

    public static PeftTextClassificationEstimator PeftTextClassification(this BinaryClassificationCatalog.BinaryClassificationTrainers catalog,
        PeftTextClassificationOptions options) => new(CatalogUtils.GetEnvironment(catalog), options, binary: true);

    /// <summary>LoRA on all-MiniLM-L6-v2 with the given columns; the label is Boolean.</summary>
    public static PeftTextClassificationEstimator PeftTextClassification(this BinaryClassificationCatalog.BinaryClassificationTrainers catalog,
        string labelColumnName = "Label", string sentence1ColumnName = "Sentence1", string scoreColumnName = "Score",
        string predictedLabelColumnName = "PredictedLabel", string? sentence2ColumnName = null, int batchSize = 32, int maxEpochs = 10) =>
        catalog.PeftTextClassification(new PeftTextClassificationOptions
        {
            LabelColumnName = labelColumnName, Sentence1ColumnName = sentence1ColumnName, ScoreColumnName = scoreColumnName,
            PredictedLabelColumnName = predictedLabelColumnName, Sentence2ColumnName = sentence2ColumnName, BatchSize = batchSize, MaxEpochs = maxEpochs,
        });
}
