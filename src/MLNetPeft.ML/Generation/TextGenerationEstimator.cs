using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Generation;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Tokenization;

namespace MLNetPeft.ML.Generation;

/// <summary>Builds a <see cref="TextGenerationTransformer"/> around a causal language model (no training).</summary>
public sealed class TextGenerationEstimator : IEstimator<TextGenerationTransformer>
{
    private readonly IHostEnvironment _env;
    private readonly CausalLanguageModel _model;
    private readonly TextTokenizer _tokenizer;
    private readonly string _outputColumnName, _inputColumnName;
    private readonly GenerationOptions _options;
    private readonly string? _scoredResponseColumnName;
    private readonly BaseModelStorage _storage;

    internal TextGenerationEstimator(IHostEnvironment env, CausalLanguageModel model, TextTokenizer tokenizer, string outputColumnName,
        string inputColumnName, GenerationOptions? options, string? scoredResponseColumnName = null, BaseModelStorage storage = BaseModelStorage.Auto)
    {
        _storage = storage;
        _scoredResponseColumnName = scoredResponseColumnName;
        _env = env;
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        _outputColumnName = string.IsNullOrWhiteSpace(outputColumnName) ? throw new ArgumentException("The output column needs a name.", nameof(outputColumnName)) : outputColumnName;
        _inputColumnName = string.IsNullOrWhiteSpace(inputColumnName) ? throw new ArgumentException("The input column needs a name.", nameof(inputColumnName)) : inputColumnName;
        _options = options ?? new GenerationOptions();
        _options.Validate();
    }

    public TextGenerationTransformer Fit(IDataView input)
    {
        TextGenerationTransformer.CheckInput(input.Schema, _inputColumnName, _env);
        if (_scoredResponseColumnName is not null) TextGenerationTransformer.CheckInput(input.Schema, _scoredResponseColumnName, _env);
        ModelFiles.RequireCheckpointFolder(_model);
        ModelFiles.CheckTokenizerMatchesCheckpoint(_model, _tokenizer, input.GetColumn<string>(_inputColumnName).Take(16).Where(t => t is not null));
        using var ch = _env.Start("Text generation");
        // The transformer keeps the checkpoint (its files, or where they are) so that it can be saved into an ML.NET model zip.
        var package = ModelPackage.Resolve(_storage, ModelPackage.WeightBytes(_model), baseUnchanged: true, ch) == BaseModelStorage.Reference
            ? ModelPackage.Reference(BaseModelReference.Of(_model.SourceFolder!))
            : ModelFiles.WithTempFolder(folder =>
            {
                _model.SavePretrained(folder);
                return ModelPackage.Embed(folder);
            });
        // The caller's model: it stays the caller's to dispose.
        return new TextGenerationTransformer(_env, _model, _tokenizer, package, _outputColumnName, _inputColumnName, _options, _scoredResponseColumnName, ownsModel: false);
    }

    public SchemaShape GetOutputSchema(SchemaShape inputSchema) =>
        TextGenerationTransformer.OutputShape(_env, inputSchema,
            _scoredResponseColumnName is null ? [_inputColumnName] : [_inputColumnName, _scoredResponseColumnName],
            _outputColumnName, scored: _scoredResponseColumnName is not null);
}

/// <summary>Catalog entry points: <c>mlContext.Transforms.Text.GenerateText(...)</c>.</summary>
public static class TextGenerationCatalog
{
    /// <summary>
    /// Adds <paramref name="outputColumnName"/> with the text <paramref name="model"/> generates after each row's
    /// <paramref name="inputColumnName"/> (greedy, 64 new tokens unless <paramref name="options"/> say otherwise).
    /// The model must come from a checkpoint folder (its tokenizer files are saved with the transformer). With
    /// <paramref name="scoredResponseColumnName"/>, each row's reference response is also scored: float columns
    /// LogLikelihood (of the response and eos given the prompt) and Perplexity. <paramref name="baseModelStorage"/> says
    /// whether a saved model zip embeds the model or refers to its checkpoint folder (embedded under 100 MB by default);
    /// a referenced model is the one on disk in the folder it was loaded from.
    /// </summary>
    public static TextGenerationEstimator GenerateText(this TransformsCatalog.TextTransforms catalog, CausalLanguageModel model, TextTokenizer tokenizer,
        string outputColumnName = "GeneratedText", string inputColumnName = "Prompt", GenerationOptions? options = null, string? scoredResponseColumnName = null,
        BaseModelStorage baseModelStorage = BaseModelStorage.Auto) =>
        new(CatalogUtils.GetEnvironment(catalog), model, tokenizer, outputColumnName, inputColumnName, options, scoredResponseColumnName, baseModelStorage);
}
