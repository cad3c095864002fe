using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Retrieval.Embeddings;
using MLNetPeft.Tokenization;

namespace MLNetPeft.ML.Retrieval;

/// <summary>Builds a <see cref="TextEmbeddingTransformer"/> around a BERT encoder (no training).</summary>
public sealed class TextEmbeddingEstimator : IEstimator<TextEmbeddingTransformer>
{
    private readonly IHostEnvironment _env;
    private readonly BertModel? _encoder;
    private readonly TextTokenizer? _tokenizer;
    private readonly string _outputColumnName, _inputColumnName;
    private readonly SentenceEmbedderOptions _options;
    private readonly BaseModelStorage _storage;

    internal TextEmbeddingEstimator(IHostEnvironment env, BertModel? encoder, TextTokenizer? tokenizer, string outputColumnName, string inputColumnName,
        SentenceEmbedderOptions? options, BaseModelStorage storage)
    {
        _env = env;
        EmbedderPackage.CheckPair(encoder, tokenizer);
        _encoder = encoder;
        _tokenizer = tokenizer;
        _outputColumnName = string.IsNullOrWhiteSpace(outputColumnName) ? throw new ArgumentException("The output column needs a name.", nameof(outputColumnName)) : outputColumnName;
        _inputColumnName = string.IsNullOrWhiteSpace(inputColumnName) ? throw new ArgumentException("The input column needs a name.", nameof(inputColumnName)) : inputColumnName;
        _options = options ?? new SentenceEmbedderOptions();
        _storage = storage;
    }

    public TextEmbeddingTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        TextEmbeddingTransformer.CheckInput(input.Schema, _inputColumnName, _env);
        using var ch = _env.Start("Text embedding");
        var (embedder, package, owns) = EmbedderPackage.Create(_encoder, _tokenizer, _options, _storage, ch);
        return new TextEmbeddingTransformer(_env, embedder, package, new TextEmbeddingTransformer.Settings(_outputColumnName, _inputColumnName, EmbedderSettings.Of(_options)), owns);
    }

    public SchemaShape GetOutputSchema(SchemaShape inputSchema) =>
        TextEmbeddingTransformer.OutputShape(inputSchema ?? throw new ArgumentNullException(nameof(inputSchema)), _inputColumnName, _outputColumnName, _env);
}

/// <summary>Catalog entry point: <c>mlContext.Transforms.Text.EmbedText(...)</c>.</summary>
public static class TextEmbeddingCatalog
{
    /// <summary>
    /// Adds <paramref name="outputColumnName"/>, a float vector of each row's <paramref name="inputColumnName"/> text as
    /// the encoder embeds it: by default the bundled all-MiniLM-L6-v2 (384 dimensions, mean pooling, L2-normalised,
    /// 256 tokens), or the BERT <paramref name="encoder"/> given with its <paramref name="tokenizer"/> (e.g. one tuned with
    /// LoRA). <paramref name="baseModelStorage"/> says whether a saved zip embeds a given encoder or refers to its folder.
    /// </summary>
    public static TextEmbeddingEstimator EmbedText(this TransformsCatalog.TextTransforms catalog, string outputColumnName = "Embedding", string inputColumnName = "Text",
        BertModel? encoder = null, TextTokenizer? tokenizer = null, SentenceEmbedderOptions? options = null, BaseModelStorage baseModelStorage = BaseModelStorage.Auto) =>
        new(CatalogUtils.GetEnvironment(catalog), encoder, tokenizer, outputColumnName, inputColumnName, options, baseModelStorage);
}
