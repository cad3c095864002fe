using System.Collections.Concurrent;
using Microsoft.Extensions.AI;
using Microsoft.ML;
using MLNetPeft.Hosting.AI;
using MLNetPeft.Hosting.Models;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Retrieval;

namespace MLNetPeft.Serving;

/// <summary>
/// The clients the endpoints serve each registered model through, made once per model name: a request names a model
/// as OpenAI's API does, and gets 404 when none is registered under that name, 400 when it is of the wrong kind.
/// </summary>
public sealed class ServedModels(ModelRegistry registry) : IDisposable
{
    private readonly ConcurrentDictionary<string, TextGenerationChatClient> _chat = new(StringComparer.OrdinalIgnoreCase);
    private readonly ConcurrentDictionary<string, TextCompletionClient> _completion = new(StringComparer.OrdinalIgnoreCase);
    private readonly ConcurrentDictionary<string, RegisteredEmbeddingGenerator> _embedding = new(StringComparer.OrdinalIgnoreCase);

    public ModelRegistry Registry => registry;

    public IChatClient Chat(string model) => _chat.GetOrAdd(Require<TextGenerationTransformer>(model, "a text generation model"), name => new TextGenerationChatClient(registry, name));

    public TextCompletionClient Completion(string model) =>
        _completion.GetOrAdd(Require<TextGenerationTransformer>(model, "a text generation model"), name => new TextCompletionClient(registry, name));

    public IEmbeddingGenerator<string, Embedding<float>> Embedding(string model) =>
        _embedding.GetOrAdd(Require<TextEmbeddingTransformer>(model, "an embedding model"), name => new RegisteredEmbeddingGenerator(registry, name));

    /// <summary>The registered name of <paramref name="model"/>, which must hold a <typeparamref name="T"/>.</summary>
    private string Require<T>(string model, string kind) where T : class, ITransformer
    {
        string? name = registry.Names.FirstOrDefault(n => string.Equals(n, model, StringComparison.OrdinalIgnoreCase))
            ?? throw new OpenAIRequestException(404, $"The model '{model}' does not exist; the models served are: {string.Join(", ", registry.Names)}.", "model", "model_not_found");
        using var lease = registry.Acquire(name);
        if (lease.Model.Find<T>() is null)
            throw OpenAIRequestException.Invalid($"The model '{name}' is not {kind}, which this endpoint needs.", "model", "model_not_supported");
        return name;
    }

    public void Dispose()
    {
        foreach (var client in _chat.Values) client.Dispose();
        foreach (var client in _completion.Values) client.Dispose();
        foreach (var generator in _embedding.Values) generator.Dispose();
    }
}
