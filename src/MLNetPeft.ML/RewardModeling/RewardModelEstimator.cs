using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Persistence;
using MLNetPeft.ML.Preferences;
using MLNetPeft.Tokenization;
using MLNetPeft.Training.RewardModeling;
using MLNetPeft.Tuners;
using MLNetPeft.Tuners.QLora;

namespace MLNetPeft.ML.RewardModeling;

/// <summary>
/// Trains a reward model on prompt/chosen/rejected columns as TRL's <c>RewardTrainer</c> does: a causal LM (reward read
/// at each row's last real token) or a BERT encoder (reward from its pooled output) with a scalar head in HF's
/// sequence-classification layout, the backbone adapted by any <see cref="FineTuningMethod"/> and the head trained in
/// full. Returns a <see cref="RewardModelTransformer"/>. The model given is not changed: fitting works on a copy.
/// </summary>
public sealed class RewardModelEstimator : IEstimator<RewardModelTransformer>
{
    private readonly IHostEnvironment _env;
    private readonly PretrainedModule _backbone;
    private readonly TextTokenizer _tokenizer;
    private readonly RewardModelOptions _options;
    private readonly int _endOfResponse;

    internal RewardModelEstimator(IHostEnvironment env, PretrainedModule backbone, TextTokenizer tokenizer, RewardModelOptions options)
    {
        _env = env;
        _backbone = backbone ?? throw new ArgumentNullException(nameof(backbone));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        options.Validate();
        // A response ends in eos (causal) or [SEP] (BERT), so the reward is read at the same kind of token in every row.
        _endOfResponse = (backbone is BertModel ? tokenizer.TokenToId("[SEP]") : tokenizer.EosId)
            ?? throw new ArgumentException(backbone is BertModel
                ? "The tokenizer has no [SEP] token, which a BERT reward model puts after every response."
                : "The tokenizer has no end-of-sequence token, which a causal reward model appends to every response (its reward is read there).", nameof(tokenizer));
    }

    private PreferenceColumns Columns => new(_options.PromptColumnName, _options.ChosenColumnName, _options.RejectedColumnName, _options.MarginColumnName);

    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        Columns.Check(inputSchema, _env);
        return RewardModelTransformer.OutputShape(inputSchema, _options.PromptColumnName, _options.ResponseColumnName, _options.ChosenColumnName,
            _options.RejectedColumnName, _options.ScoreColumnName, _options.ChosenScoreColumnName, _options.RejectedScoreColumnName);
    }

    public RewardModelTransformer Fit(IDataView input) => Fit(input, _options.ValidationData);

    /// <summary>Fits on <paramref name="trainData"/>, computing the pairwise loss on <paramref name="validationData"/> when given.</summary>
    public RewardModelTransformer Fit(IDataView trainData, IDataView? validationData)
    {
        var o = _options;
        Columns.Check(trainData.Schema, _env);
        if (validationData is not null) Columns.Check(validationData.Schema, _env);
        ModelFiles.RequireCheckpointFolder(_backbone);
        using var ch = _env.Start("Reward model");
        var train = PreferenceData.Read(trainData, Columns, _tokenizer, _endOfResponse, o.MaxLength, o.EmptyRows, o.LongRows, "training", ch);
        var validation = validationData is null ? null : PreferenceData.Read(validationData, Columns, _tokenizer, _endOfResponse, o.MaxLength, o.EmptyRows, o.LongRows, "validation", ch);
        ch.Info($"Reward model ({o.Method}) on {train.Count} pairs ({train.Truncated} cut to {o.MaxLength} tokens), {o.Training.MaxSteps} steps" +
            (validation is null ? "." : $"; {validation.Count} validation pairs."));
        var like = ModelLoadOptions.Like(_backbone);
        var placement = new ModelLoadOptions { DType = o.DType ?? like.DType, Device = o.Device ?? like.Device };
        bool keepAdapter = PeftMethods.CannotMerge(o.Method);
        return ModelFiles.WithTempFolder(work =>
        {
            var baseFolder = Path.Combine(work, "base");
            _backbone.SavePretrained(baseFolder);
            ModelPackage package;
            using (var model = NewRewardModel(baseFolder, placement, ch, out var quantized))
            {
                // Methods that cannot be merged keep their adapter apart, over the classifier as it starts (its head in the adapter).
                if (keepAdapter) model.SavePretrained(Path.Combine(work, "classifier"));
                var peft = PeftMethods.Apply(o.Method, model, o, _tokenizer, o.Seed);
                string head = model is BertForSequenceClassification ? "classifier" : "score";
                if (peft is not null)
                {
                    peft.SaveModulesWhole(head);
                    var (trainable, total) = peft.ParameterCounts();
                    ch.Info($"{o.Method}: {trainable:N0} of {total:N0} parameters train ({100.0 * trainable / total:F2} %), the head '{head}' in full.");
                }
                model.train();
                long trained = model.parameters().Where(p => p.requires_grad).Sum(p => p.numel());
                var result = new RewardModelTrainer(model, o.Training, o.CenterRewardsCoefficient, peft as ITrainingStepHook).Train(train, validation, o.Progress, o.CancellationToken);
                ch.Info($"Final training loss {result.FinalLoss:F4} after {result.Steps} steps" + (result.ValidationLoss is { } v ? $"; validation loss {v:F4}." : "."));
                if (keepAdapter)
                {
                    var adapterFolder = Path.Combine(work, "adapter");
                    PeftAdapterFiles.Save(adapterFolder, peft!, taskType: "SEQ_CLS");
                    package = ModelPackage.Embed(Path.Combine(work, "classifier"), adapterFolder);
                }
                else
                {
                    package = ModelPackage.MergeAndEmbed(model, quantized, peft, Path.Combine(work, "tuned"));
                }
                return Transformer(package, placement, trained);
            }
        });
    }

    private RewardModelTransformer Transformer(ModelPackage package, ModelLoadOptions placement, long trained)
    {
        // The transformer runs exactly what the zip holds, so a saved and reloaded model scores the same.
        try
        {
            var o = _options;
            var (model, tokenizer) = package.LoadSequenceClassifier(o.Pooling, placement);
            return new RewardModelTransformer(_env, model, tokenizer, package, new RewardModelTransformer.Settings(o.PromptColumnName, o.ResponseColumnName,
                o.ChosenColumnName, o.RejectedColumnName, o.ScoreColumnName, o.ChosenScoreColumnName, o.RejectedScoreColumnName, o.MaxLength, _endOfResponse,
                (model as BertForSequenceClassification)?.Pooling)) { TrainedParameters = trained };
        }
        catch
        {
            package.Dispose();
            throw;
        }
    }

    /// <summary>A copy of the backbone from <paramref name="folder"/> with a new one-output head (its backbone NF4-quantised for QLoRA).</summary>
    private SequenceClassificationModel NewRewardModel(string folder, ModelLoadOptions placement, IChannel ch, out Nf4Model? quantized)
    {
        var o = _options;
        quantized = null;
        if (_backbone is BertModel)
        {
            var bert = PretrainedModels.LoadBert(folder, placement);
            if (o.Method == FineTuningMethod.QLora) quantized = PeftMethods.Quantize(bert, o.Quantization, ch);
            return new BertForSequenceClassification(bert, numLabels: 1, o.Pooling ?? (bert.HasPooler ? SequencePooling.Cls : SequencePooling.Mean), o.Seed);
        }
        var causal = PretrainedModels.LoadCausalLM(folder, placement);
        if (o.Method == FineTuningMethod.QLora) quantized = PeftMethods.Quantize(causal, o.Quantization, ch);
        return new CausalLmForSequenceClassification(causal, numLabels: 1, padTokenId: _tokenizer.PadId ?? _tokenizer.EosId, seed: o.Seed);
    }
}

/// <summary>Catalog entry points: <c>mlContext.Transforms.Text.TrainRewardModel(...)</c>.</summary>
public static class RewardModelCatalog
{
    /// <summary>Trains a reward model on a causal LM of the library (reward read at the last real token).</summary>
    public static RewardModelEstimator TrainRewardModel(this TransformsCatalog.TextTransforms catalog, CausalLanguageModel model, TextTokenizer tokenizer,
        RewardModelOptions? options = null) =>
        new(CatalogUtils.GetEnvironment(catalog), model, tokenizer, options ?? new RewardModelOptions());

    /// <summary>Trains a reward model on a BERT encoder (reward from the pooled output).</summary>
    public static RewardModelEstimator TrainRewardModel(this TransformsCatalog.TextTransforms catalog, BertModel encoder, TextTokenizer tokenizer,
        RewardModelOptions? options = null) =>
        new(CatalogUtils.GetEnvironment(catalog), encoder, tokenizer, options ?? new RewardModelOptions());
}
