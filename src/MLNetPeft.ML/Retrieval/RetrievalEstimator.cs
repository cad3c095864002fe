using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Retrieval.Chunking;
using MLNetPeft.Retrieval.Retrievers;

namespace MLNetPeft.ML.Retrieval;

/// <summary>
/// Builds a knowledge base from a corpus (a data view of document ids and texts) at <c>Fit</c> (chunking, embedding,
/// indexing) and returns a <see cref="RetrievalTransformer"/> that retrieves from it for each query row.
/// </summary>
public sealed class RetrievalEstimator : IEstimator<RetrievalTransformer>
{
    private readonly IHostEnvironment _env;
    private readonly IDataView _corpus;
    private readonly RetrievalOptions _options;

    internal RetrievalEstimator(IHostEnvironment env, IDataView corpus, RetrievalOptions? options)
    {
        _env = env;
        _corpus = corpus ?? throw new ArgumentNullException(nameof(corpus));
        _options = options ?? new RetrievalOptions();
        _options.Validate();
    }

    public RetrievalTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        var o = _options;
        TextColumns.Require(input.Schema, o.QueryColumnName, "query", _env);
        TextColumns.Require(_corpus.Schema, o.DocumentIdColumnName, "corpus document id", _env);
        TextColumns.Require(_corpus.Schema, o.DocumentTextColumnName, "corpus document text", _env);
        using var ch = _env.Start("Retrieval");
        var documents = _corpus.GetColumn<string>(o.DocumentIdColumnName).Zip(_corpus.GetColumn<string>(o.DocumentTextColumnName),
            (id, text) => (id ?? "", text ?? "")).ToList();
        if (documents.Count == 0)
            throw new ArgumentException($"The corpus is empty: its '{o.DocumentTextColumnName}' column has no rows, so there is nothing to retrieve.", "corpus");
        var (embedder, package, ownsEncoder) = EmbedderPackage.Create(o.Encoder, o.Tokenizer, o.Embedding, o.EncoderStorage, ch);
        OpenedKnowledgeBase? knowledgeBase = null;
        try
        {
            var chunker = o.ChunkTokens is { } tokens ? new TokenChunker(embedder.Tokenizer, tokens, o.ChunkOverlap) : null;
            (knowledgeBase, var location) = OpenedKnowledgeBase.Build(o, embedder, documents, chunker);
            ch.Info($"Knowledge base ({o.Storage}): {documents.Count} documents, {knowledgeBase.KnowledgeBase.Count} passages, {embedder.Dimension}-dimensional vectors.");
            var files = location is null ? RetrievalTransformer.Store(knowledgeBase.KnowledgeBase) : null;
            var settings = new RetrievalTransformer.Settings(o.QueryColumnName, o.PassagesColumnName, o.PassageIdsColumnName, o.ScoresColumnName, o.Top, o.Mode,
                EmbedderSettings.Of(o.Embedding), location);
            return new RetrievalTransformer(_env, knowledgeBase, package, files, settings, ownsEncoder);
        }
        catch
        {
            knowledgeBase?.Dispose();
            package.Dispose();
            if (ownsEncoder) embedder.Encoder.Dispose();
            throw;
        }
    }

    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        var o = _options;
        TextColumns.Require(inputSchema, o.QueryColumnName, "query", _env);
        var columns = inputSchema.ToDictionary(c => c.Name);
        columns[o.PassagesColumnName] = new SchemaShape.Column(o.PassagesColumnName, SchemaShape.Column.VectorKind.VariableVector, TextDataViewType.Instance, false);
        columns[o.PassageIdsColumnName] = new SchemaShape.Column(o.PassageIdsColumnName, SchemaShape.Column.VectorKind.VariableVector, TextDataViewType.Instance, false);
        columns[o.ScoresColumnName] = new SchemaShape.Column(o.ScoresColumnName, SchemaShape.Column.VectorKind.VariableVector, NumberDataViewType.Single, false);
        return new SchemaShape(columns.Values);
    }
}

/// <summary><c>mlContext.Retrieval()</c>: the retrieval stage of RAG.</summary>
public sealed class RetrievalCatalog
{
    private readonly MLContext _mlContext;

    internal RetrievalCatalog(MLContext mlContext) => _mlContext = mlContext;

    /// <summary>
    /// Retrieves passages of <paramref name="corpus"/> (columns Id and Text by default) for each row's query (column
    /// Query): dense all-MiniLM-L6-v2 search by default, or BM25, or both fused (<see cref="RetrievalOptions.Mode"/>).
    /// </summary>
    public RetrievalEstimator Retrieve(IDataView corpus, RetrievalOptions? options = null) => new(_mlContext, corpus, options);
}

public static class RetrievalCatalogExtensions
{
    /// <summary>The retrieval catalog: <c>mlContext.Retrieval().Retrieve(corpus, options)</c>.</summary>
    public static RetrievalCatalog Retrieval(this MLContext mlContext) => new(mlContext ?? throw new ArgumentNullException(nameof(mlContext)));
}
