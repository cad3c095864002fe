using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;

namespace MLNetPeft.ML.Retrieval;

/// <summary>Builds a <see cref="PromptBuilderTransformer"/> (no training; for nearest-neighbour demonstrations the pool is embedded at Fit).</summary>
public sealed class PromptBuilderEstimator : IEstimator<PromptBuilderTransformer>
{
    private readonly IHostEnvironment _env;
    private readonly string _outputColumnName;
    private readonly PromptBuilderOptions _options;

    internal PromptBuilderEstimator(IHostEnvironment env, string outputColumnName, PromptBuilderOptions? options)
    {
        _env = env;
        _outputColumnName = string.IsNullOrWhiteSpace(outputColumnName) ? throw new ArgumentException("The output column needs a name.", nameof(outputColumnName)) : outputColumnName;
        _options = options ?? new PromptBuilderOptions();
        _options.Validate();
    }

    public PromptBuilderTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        var o = _options;
        PromptBuilderTransformer.CheckInput(input.Schema, o.QuestionColumnName, o.PassagesColumnName, _env);
        bool nearest = o.Selection == DemonstrationSelection.Nearest && o.DemonstrationCount > 0;
        var settings = new PromptBuilderTransformer.Settings(_outputColumnName, o.QuestionColumnName, o.PassagesColumnName, o.Template, o.DemonstrationTemplate, o.PassageTemplate,
            o.DemonstrationCount == 0 ? [] : o.Demonstrations.ToList(), o.DemonstrationCount, o.Selection, o.Seed, nearest ? EmbedderSettings.Of(o.Embedding) : null);
        if (!nearest) return new PromptBuilderTransformer(_env, settings, null, null, false);
        using var ch = _env.Start("Prompt builder");
        var (embedder, package, owns) = EmbedderPackage.Create(o.Encoder, o.Tokenizer, o.Embedding, o.EncoderStorage, ch);
        try
        {
            return new PromptBuilderTransformer(_env, settings, embedder, package, owns);
        }
        catch
        {
            package.Dispose();
            if (owns) embedder.Encoder.Dispose();
            throw;
        }
    }

    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        TextColumns.Require(inputSchema, _options.QuestionColumnName, "question", _env);
        if (_options.PassagesColumnName is { } p && !inputSchema.TryFindColumn(p, out _)) throw _env.ExceptSchemaMismatch(nameof(inputSchema), "passages", p);
        var columns = inputSchema.ToDictionary(c => c.Name);
        columns[_outputColumnName] = new SchemaShape.Column(_outputColumnName, SchemaShape.Column.VectorKind.Scalar, TextDataViewType.Instance, false);
        return new SchemaShape(columns.Values);
    }
}

/// <summary>Catalog entry point: <c>mlContext.Transforms.Text.BuildPrompt(...)</c>.</summary>
public static class PromptBuilderCatalog
{
    /// <summary>
    /// Adds <paramref name="outputColumnName"/>, each row's prompt: the template with the question, the retrieved passages
    /// as context and in-context demonstrations filled in (see <see cref="PromptBuilderOptions"/>).
    /// </summary>
    public static PromptBuilderEstimator BuildPrompt(this TransformsCatalog.TextTransforms catalog, string outputColumnName = "Prompt", PromptBuilderOptions? options = null) =>
        new(CatalogUtils.GetEnvironment(catalog), outputColumnName, options);
}
