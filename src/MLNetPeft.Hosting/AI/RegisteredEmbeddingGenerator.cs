using Microsoft.Extensions.AI;
using MLNetPeft.Hosting.Models;
using MLNetPeft.ML.Retrieval;
using MLNetPeft.Retrieval.Embeddings;

namespace MLNetPeft.Hosting.AI;

/// <summary>
/// Microsoft.Extensions.AI's <see cref="IEmbeddingGenerator{TInput,TEmbedding}"/> over a registered embedding model
/// (a saved <c>EmbedText</c> pipeline). Each request embeds with the version current when it starts, through the
/// library's <see cref="SentenceEmbeddingGenerator"/>, so a reload of the file never cuts one off.
/// </summary>
public sealed class RegisteredEmbeddingGenerator : IEmbeddingGenerator<string, Embedding<float>>
{
    private readonly ModelRegistry _registry;
    private readonly string _modelName;

    public RegisteredEmbeddingGenerator(ModelRegistry registry, string modelName)
    {
        _registry = registry ?? throw new ArgumentNullException(nameof(registry));
        _modelName = modelName ?? throw new ArgumentNullException(nameof(modelName));
        _registry.GetRegistration(modelName); // an unknown name fails here, at registration, not at the first request
    }

    public async Task<GeneratedEmbeddings<Embedding<float>>> GenerateAsync(IEnumerable<string> values, EmbeddingGenerationOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        using var use = _registry.Use<TextEmbeddingTransformer>(_modelName, "generate embeddings");
        return await new SentenceEmbeddingGenerator(use.Value.Embedder, _modelName).GenerateAsync(values, options, cancellationToken).ConfigureAwait(false);
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(EmbeddingGeneratorMetadata))
        {
            using var use = _registry.Use<TextEmbeddingTransformer>(_modelName, "generate embeddings");
            return new EmbeddingGeneratorMetadata("MLNetPeft", defaultModelId: _modelName, defaultModelDimensions: use.Value.Dimension);
        }
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Nothing to release: the model belongs to the registry.</summary>
    public void Dispose() { }
}
