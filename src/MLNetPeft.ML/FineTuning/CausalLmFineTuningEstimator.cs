using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Tokenization;
using MLNetPeft.Training.LanguageModeling;
using MLNetPeft.Tuners.Lora;

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

    public SchemaShape GetOutputSchema(SchemaShape inputSchema) =>
        TextGenerationTransformer.OutputShape(_env, inputSchema, [_options.PromptColumnName, _options.ResponseColumnName],
            _options.OutputColumnName, _options.ScoreResponses);

    public TextGenerationTransformer Fit(IDataView input)
    {
        var o = _options;
        TextGenerationTransformer.CheckInput(input.Schema, o.PromptColumnName, _env);
        TextGenerationTransformer.CheckInput(input.Schema, o.ResponseColumnName, _env);
        ModelFiles.RequireCheckpointFolder(_model);
        using var ch = _env.Start("Fine-tuning");
        var examples = ReadExamples(input, ch);
        TokenBlocks blocks;
        try
        {
            blocks = TokenBlocks.FromExamples(examples, o.MaxLength, _tokenizer.PadId ?? _tokenizer.EosId!.Value, _tokenizer.EosId!.Value, o.CompletionOnlyLoss);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"With MaxLength = {o.MaxLength} tokens no row keeps any of its response; raise MaxLength.", nameof(input), e);
        }
        if (blocks.Truncated > 0) ch.Warning($"{blocks.Truncated} row(s) longer than MaxLength = {o.MaxLength} tokens were cut.");
        ch.Info($"Fine-tuning ({o.Method}) on {blocks.Count} rows, {blocks.TargetTokens} target tokens, {o.Training.MaxSteps} steps.");

        // Work on a copy: the caller's model stays as it was.
        string? copyFolder = null;
        CausalLanguageModel? tuned = null;
        try
        {
            copyFolder = Path.Combine(Path.GetTempPath(), "mlnetpeft-" + Guid.NewGuid().ToString("N"));
            _model.SavePretrained(copyFolder);
            tuned = PretrainedModels.LoadCausalLM(copyFolder);
            tuned.train();
            LoraModel? lora = o.Method == FineTuningMethod.Lora ? LoraModel.Apply(tuned, o.Lora, seed: o.Seed) : null;
            if (lora is not null)
            {
                var (trainable, total) = lora.ParameterCounts();
                ch.Info($"LoRA r = {o.Lora.R}: {trainable:N0} of {total:N0} parameters train ({100.0 * trainable / total:F2} %).");
            }
            var result = new LanguageModelTrainer(tuned, o.Training).Train(blocks, progress: o.Progress, cancellationToken: o.CancellationToken);
            ch.Info($"Final training loss {result.FinalLoss:F4} after {result.Steps} steps.");
            lora?.MergeAndUnload();
            tuned.eval();
            tuned.SavePretrained(copyFolder);
            var files = ModelFiles.Capture(copyFolder);
            var transformer = new TextGenerationTransformer(_env, tuned, _tokenizer, files, o.OutputColumnName, o.PromptColumnName, o.Generation,
                o.ScoreResponses ? o.ResponseColumnName : null);
            tuned = null; // owned by the transformer now
            return transformer;
        }
        finally
        {
            tuned?.Dispose();
            if (copyFolder is not null && Directory.Exists(copyFolder)) Directory.Delete(copyFolder, recursive: true);
        }
    }

    private List<(IReadOnlyList<int> Prompt, IReadOnlyList<int> Response)> ReadExamples(IDataView input, IChannel ch)
    {
        var o = _options;
        var prompts = input.GetColumn<string>(o.PromptColumnName).ToList();
        var responses = input.GetColumn<string>(o.ResponseColumnName).ToList();
        if (prompts.Count == 0) throw new ArgumentException("The training data view has no rows.", nameof(input));
        var examples = new List<(IReadOnlyList<int>, IReadOnlyList<int>)>(prompts.Count);
        int skipped = 0;
        for (int row = 0; row < prompts.Count; row++)
        {
            if (string.IsNullOrWhiteSpace(prompts[row]) || string.IsNullOrWhiteSpace(responses[row]))
            {
                if (o.EmptyRows == BadRowHandling.Fail)
                    throw new InvalidOperationException($"Row {row} has an empty {(string.IsNullOrWhiteSpace(prompts[row]) ? o.PromptColumnName : o.ResponseColumnName)}; clean the data or set EmptyRows to SkipOrTruncate.");
                skipped++;
                continue;
            }
            var example = (Prompt: _tokenizer.Encode(prompts[row]), Response: _tokenizer.Encode(responses[row], addSpecialTokens: false));
            int length = example.Prompt.Count + example.Response.Count + 1; // + eos
            if (length > o.MaxLength + 1 && o.LongRows == BadRowHandling.Fail)
                throw new InvalidOperationException($"Row {row} has {length} tokens with eos, more than MaxLength = {o.MaxLength}; raise MaxLength or set LongRows to SkipOrTruncate.");
            examples.Add(example);
        }
        if (skipped > 0) ch.Warning($"{skipped} row(s) with an empty prompt or response were skipped.");
        if (examples.Count == 0) throw new ArgumentException($"Every row has an empty {o.PromptColumnName} or {o.ResponseColumnName}.", nameof(input));
        return examples;
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
