using Microsoft.Extensions.AI;

namespace MLNetPeft.Retrieval.Embeddings;

/// <summary>
/// A <see cref="SentenceEmbedder"/> behind Microsoft.Extensions.AI's <see cref="IEmbeddingGenerator{TInput, TEmbedding}"/>,
/// so code written against that interface (Semantic Kernel, <c>EmbeddingGeneratorBuilder</c> pipelines, vector stores)
/// embeds with the library's encoders, tuned ones included. The embedder is not disposed with the generator.
/// </summary>
public sealed class SentenceEmbeddingGenerator : IEmbeddingGenerator<string, Embedding<float>>
{
    private readonly EmbeddingGeneratorMetadata _metadata;

    /// <param name="embedder">The encoder and its settings.</param>
    /// <param name="modelId">The name reported as the model id (e.g. "all-MiniLM-L6-v2").</param>
    public SentenceEmbeddingGenerator(SentenceEmbedder embedder, string? modelId = null)
    {
        Embedder = embedder ?? throw new ArgumentNullException(nameof(embedder));
        ModelId = modelId;
        _metadata = new EmbeddingGeneratorMetadata("MLNetPeft", defaultModelId: modelId, defaultModelDimensions: embedder.Dimension);
    }

    public SentenceEmbedder Embedder { get; }
    public string? ModelId { get; }

    public Task<GeneratedEmbeddings<Embedding<float>>> GenerateAsync(IEnumerable<string> values, EmbeddingGenerationOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (options?.Dimensions is { } dimensions && dimensions != Embedder.Dimension)
            throw new ArgumentException($"EmbeddingGenerationOptions.Dimensions is {dimensions}; this encoder gives {Embedder.Dimension}-dimensional vectors.", nameof(options));
        var texts = values.ToList();
        for (int i = 0; i < texts.Count; i++)
            if (texts[i] is null) throw new ArgumentException($"Value {i} is null.", nameof(values));
        // The forward passes are CPU-bound: run them off the caller's thread, as a remote client would not block it.
        return Task.Run(() =>
        {
            // Tokenized once: for the vectors and for the usage count.
            var tokenized = texts.Select(Embedder.Tokenize).ToList();
            var vectors = Embedder.EmbedTokenized(tokenized, cancellationToken);
            var created = DateTimeOffset.UtcNow;
            return new GeneratedEmbeddings<Embedding<float>>(vectors.Select(v => new Embedding<float>(v) { ModelId = ModelId, CreatedAt = created }))
            {
                Usage = new UsageDetails { InputTokenCount = tokenized.Sum(t => (long)t.Count) },
            };
        }, cancellationToken);
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(EmbeddingGeneratorMetadata)) return _metadata;
        return serviceType.IsInstanceOfType(this) ? this : serviceType.IsInstanceOfType(Embedder) ? Embedder : null;
    }

    /// <summary>Nothing to release: the embedder and its encoder belong to the caller.</summary>
    public void Dispose() { }
}
