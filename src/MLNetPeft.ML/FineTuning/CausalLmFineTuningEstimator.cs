using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Tokenization;
using MLNetPeft.Training.LanguageModeling;
using MLNetPeft.Tuners;

namespace MLNetPeft.ML.FineTuning;

/// <summary>
/// Supervised fine-tuning of a causal language model on prompt/response columns (full or LoRA), returning a
/// <see cref="TextGenerationTransformer"/> with the tuned model. The model given to the estimator is not changed:
/// fitting works on a copy.
/// </summary>
public sealed class CausalLmFineTuningEstimator : IEstimator<TextGenerationTransformer>
{
    private readonly IHostEnvironment _env;
    private readonly CausalLanguageModel _model;
    private readonly TextTokenizer _tokenizer;
    private readonly CausalLmFineTuningOptions _options;

    internal CausalLmFineTuningEstimator(IHostEnvironment env, CausalLanguageModel model, TextTokenizer tokenizer, CausalLmFineTuningOptions options)
    {
        _env = env;
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        options.Validate();
        if (_tokenizer.EosId is null) throw new ArgumentException("The tokenizer has no end-of-sequence token, which fine-tuning appends to every response.", nameof(tokenizer));
    }

    /// <summary>The columns the fitted transformer generates from (the prompt, or the text in continued pretraining) and scores.</summary>
    private string GenerationInput => _options.TextColumnName ?? _options.PromptColumnName;

    private IEnumerable<string> TrainingColumns => _options.TextColumnName is { } text ? [text] : [_options.PromptColumnName, _options.ResponseColumnName];

    public SchemaShape GetOutputSchema(SchemaShape inputSchema) =>
        TextGenerationTransformer.OutputShape(_env, inputSchema, TrainingColumns, _options.OutputColumnName, _options.ScoreResponses);

    public TextGenerationTransformer Fit(IDataView input) => Fit(input, _options.ValidationData);

    /// <summary>Fits on <paramref name="trainData"/>, computing the validation loss on <paramref name="validationData"/> when given.</summary>
    public TextGenerationTransformer Fit(IDataView trainData, IDataView? validationData)
    {
        var o = _options;
        foreach (var column in TrainingColumns) TextGenerationTransformer.CheckInput(trainData.Schema, column, _env);
        if (validationData is not null)
            foreach (var column in TrainingColumns) TextGenerationTransformer.CheckInput(validationData.Schema, column, _env);
        ModelFiles.RequireCheckpointFolder(_model);
        using var ch = _env.Start("Fine-tuning");
        var (trainTexts, examples) = ReadExamples(trainData, "training", ch);
        ModelFiles.CheckTokenizerMatchesCheckpoint(_model, _tokenizer, trainTexts);
        var blocks = MakeBlocks(examples, "training", ch);
        var validation = validationData is null ? null : MakeBlocks(ReadExamples(validationData, "validation", ch).Examples, "validation", ch);
        ch.Info($"Fine-tuning ({o.Method}) on {examples.Count} rows in {blocks.Count} blocks, {blocks.TargetTokens} target tokens, {o.Training.MaxSteps} steps" +
            (validation is null ? "." : $"; {validation.Count} validation blocks."));

        return CausalLmTuning.TuneCopy(_env, _model, _tokenizer, o, ch, GenerationInput, o.ScoreResponses ? o.ResponseColumnName : null, run =>
        {
            var result = new LanguageModelTrainer(run.Model, o.Training, run.Adapter as ITrainingStepHook).Train(blocks, validation, o.Progress, o.CancellationToken);
            if (result.ValidationLoss is { } v) ch.Info($"Validation perplexity {Math.Exp(v):F3}.");
            return result;
        });
    }

    private TokenBlocks MakeBlocks(List<(IReadOnlyList<int> Prompt, IReadOnlyList<int> Response)> examples, string what, IChannel ch)
    {
        var o = _options;
        bool completionOnly = o.CompletionOnlyLoss && o.TextColumnName is null;
        try
        {
            var blocks = o.Packing
                ? TokenBlocks.PackExamples(examples, o.MaxLength, _tokenizer.EosId!.Value, completionOnly)
                : TokenBlocks.FromExamples(examples, o.MaxLength, _tokenizer.PadId ?? _tokenizer.EosId!.Value, _tokenizer.EosId!.Value, completionOnly);
            if (blocks.Truncated > 0) ch.Warning($"{blocks.Truncated} {what} row(s) longer than MaxLength = {o.MaxLength} tokens were cut.");
            return blocks;
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException(o.Packing
                ? $"The {what} data holds fewer than MaxLength + 1 = {o.MaxLength + 1} tokens, too few for one packed block; lower MaxLength or add rows."
                : $"With MaxLength = {o.MaxLength} tokens no {what} row keeps any of its response; raise MaxLength.", what + "Data", e);
        }
    }

    private (List<string> Texts, List<(IReadOnlyList<int> Prompt, IReadOnlyList<int> Response)> Examples) ReadExamples(IDataView data, string what, IChannel ch)
    {
        var o = _options;
        var columns = TrainingColumns.ToArray();
        var values = columns.Select(c => data.GetColumn<string>(c).ToList()).ToArray();
        if (values[0].Count == 0) throw new ArgumentException($"The {what} data view has no rows.", what + "Data");
        var texts = new List<string>();
        var examples = new List<(IReadOnlyList<int>, IReadOnlyList<int>)>(values[0].Count);
        int skipped = 0;
        for (int row = 0; row < values[0].Count; row++)
        {
            int blank = Array.FindIndex(values, v => string.IsNullOrWhiteSpace(v[row]));
            if (blank >= 0)
            {
                if (o.EmptyRows == BadRowHandling.Fail)
                    throw new InvalidOperationException($"Row {row} of the {what} data has an empty {columns[blank]}; clean the data or set EmptyRows to SkipOrTruncate.");
                skipped++;
                continue;
            }
            texts.Add(values[0][row]);
            // Continued pretraining learns the whole text: it is all "prompt" with completion-only loss off.
            var example = columns.Length == 1
                ? (Prompt: _tokenizer.Encode(values[0][row]), Response: (IReadOnlyList<int>)[])
                : (Prompt: _tokenizer.Encode(values[0][row]), Response: _tokenizer.Encode(values[1][row], addSpecialTokens: false));
            int length = example.Prompt.Count + example.Response.Count + 1; // + eos
            if (!o.Packing && length > o.MaxLength + 1 && o.LongRows == BadRowHandling.Fail)
                throw new InvalidOperationException($"Row {row} of the {what} data has {length} tokens with eos, more than MaxLength = {o.MaxLength}; " +
                    "raise MaxLength, set LongRows to SkipOrTruncate, or use Packing.");
            examples.Add(example);
        }
        if (skipped > 0) ch.Warning($"{skipped} {what} row(s) with an empty {string.Join(" or ", columns)} were skipped.");
        if (examples.Count == 0) throw new ArgumentException($"Every {what} row has an empty {string.Join(" or ", columns)}.", what + "Data");
        return (texts, examples);
    }
}

/// <summary>Catalog entry point: <c>mlContext.Transforms.Text.FineTuneCausalLm(...)</c>.</summary>
public static class CausalLmFineTuningCatalog
{
    /// <summary>Fine-tunes <paramref name="model"/> on the prompt/response columns and adds a generated-text column.</summary>
    public static CausalLmFineTuningEstimator FineTuneCausalLm(this TransformsCatalog.TextTransforms catalog, CausalLanguageModel model, TextTokenizer tokenizer,
        CausalLmFineTuningOptions? options = null) =>
        new(CatalogUtils.GetEnvironment(catalog), model, tokenizer, options ?? new CausalLmFineTuningOptions());
}
