using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Persistence;
using MLNetPeft.ML.Preferences;
using MLNetPeft.Tokenization;
using MLNetPeft.Training;
using MLNetPeft.Training.Dpo;
using MLNetPeft.Tuners;

namespace MLNetPeft.ML.Dpo;

/// <summary>
/// Direct preference optimisation of a causal language model on prompt/chosen/rejected columns (any method of
/// <see cref="FineTuningMethod"/>; the reference is the model with its adapter disabled, or a frozen copy for full
/// fine-tuning), returning a <see cref="TextGenerationTransformer"/> with the tuned model that generates from the
/// prompt column. The model given to the estimator is not changed: fitting works on a copy.
/// </summary>
public sealed class CausalLmDpoEstimator : IEstimator<TextGenerationTransformer>
{
    private readonly IHostEnvironment _env;
    private readonly CausalLanguageModel _model;
    private readonly TextTokenizer _tokenizer;
    private readonly CausalLmDpoOptions _options;

    internal CausalLmDpoEstimator(IHostEnvironment env, CausalLanguageModel model, TextTokenizer tokenizer, CausalLmDpoOptions options)
    {
        _env = env;
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        options.Validate();
        if (_tokenizer.EosId is null) throw new ArgumentException("The tokenizer has no end-of-sequence token, which DPO appends to every response.", nameof(tokenizer));
    }

    private PreferenceColumns Columns => new(_options.PromptColumnName, _options.ChosenColumnName, _options.RejectedColumnName);

    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        Columns.Check(inputSchema, _env);
        return TextGenerationTransformer.OutputShape(_env, inputSchema, [_options.PromptColumnName], _options.OutputColumnName, scored: false);
    }

    public TextGenerationTransformer Fit(IDataView input) => Fit(input, _options.ValidationData);

    /// <summary>Fits on <paramref name="trainData"/>, computing the validation loss (DPO's) on <paramref name="validationData"/> when given.</summary>
    public TextGenerationTransformer Fit(IDataView trainData, IDataView? validationData)
    {
        var o = _options;
        Columns.Check(trainData.Schema, _env);
        if (validationData is not null) Columns.Check(validationData.Schema, _env);
        ModelFiles.RequireCheckpointFolder(_model);
        using var ch = _env.Start("DPO");
        int eos = _tokenizer.EosId!.Value;
        var train = PreferenceData.Read(trainData, Columns, _tokenizer, eos, o.MaxLength, o.EmptyRows, o.LongRows, "training", ch);
        var validation = validationData is null ? null : PreferenceData.Read(validationData, Columns, _tokenizer, eos, o.MaxLength, o.EmptyRows, o.LongRows, "validation", ch);
        ch.Info($"DPO ({o.Method}, {o.Dpo.LossType} loss, beta {o.Dpo.Beta}) on {train.Count} pairs, {o.Training.MaxSteps} steps" +
            (validation is null ? "." : $"; {validation.Count} validation pairs."));
        return CausalLmTuning.TuneCopy(_env, _model, _tokenizer, o, ch, o.PromptColumnName, scoredResponseColumn: null, run =>
        {
            // PEFT: the reference is the policy with its adapter disabled; full fine-tuning needs a frozen copy of the start.
            using var reference = run.Adapter is null ? run.LoadFrozenCopy() : null;
            var trainer = new DpoTrainer(run.Model, o.Training, o.Dpo, run.Adapter, reference, run.Adapter as ITrainingStepHook);
            var result = trainer.Train(train, validation, o.Progress, o.CancellationToken);
            if (validation is not null)
            {
                var m = trainer.Evaluate(validation);
                ch.Info($"Validation: implicit-reward accuracy {m.RewardsAccuracy:P1}, margin {m.RewardsMargin:F4} (chosen {m.RewardsChosen:F4}, rejected {m.RewardsRejected:F4}).");
            }
            return result;
        });
    }
}

/// <summary>Catalog entry point: <c>mlContext.Transforms.Text.TrainDpo(...)</c>.</summary>
public static class CausalLmDpoCatalog
{
    /// <summary>Tunes <paramref name="model"/> by DPO on the prompt/chosen/rejected columns and adds a generated-text column.</summary>
    public static CausalLmDpoEstimator TrainDpo(this TransformsCatalog.TextTransforms catalog, CausalLanguageModel model, TextTokenizer tokenizer,
        CausalLmDpoOptions? options = null) =>
        new(CatalogUtils.GetEnvironment(catalog), model, tokenizer, options ?? new CausalLmDpoOptions());
}
