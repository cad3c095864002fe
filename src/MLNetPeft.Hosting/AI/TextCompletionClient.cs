using System.Runtime.CompilerServices;
using Microsoft.Extensions.AI;
using MLNetPeft.Hosting.Models;
using MLNetPeft.ML.Generation;

namespace MLNetPeft.Hosting.AI;

/// <summary>A completion of a raw prompt: the text, why it ended, and the tokens used.</summary>
public sealed record TextCompletion(string Text, ChatFinishReason FinishReason, UsageDetails Usage);

/// <summary>A piece of a streamed completion; the last one has the finish reason and usage.</summary>
public sealed record TextCompletionUpdate(string Text, ChatFinishReason? FinishReason = null, UsageDetails? Usage = null);

/// <summary>
/// Continues raw prompts (no chat template) with a saved generation model, as OpenAI's legacy completions endpoint
/// does; options, batching and streaming as for <see cref="TextGenerationChatClient"/>.
/// </summary>
public sealed class TextCompletionClient : IDisposable
{
    private readonly GenerationSource _source;

    /// <summary>A client over <paramref name="transformer"/>, which stays the caller's.</summary>
    public TextCompletionClient(TextGenerationTransformer transformer, string? modelId = null) => _source = new GenerationSource(transformer, modelId);

    /// <summary>A client over the registered model <paramref name="modelName"/>, which must hold a text generation transformer.</summary>
    public TextCompletionClient(ModelRegistry registry, string modelName) => _source = new GenerationSource(registry, modelName, "complete text");

    public string? ModelId => _source.ModelId;

    public async Task<TextCompletion> CompleteAsync(string prompt, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        _source.CheckModelId(options);
        using var use = _source.Acquire();
        var (result, usage) = await GenerationSource.GenerateAsync(use, prompt, GenerationSource.WithRequest(use.Value.Options, options), cancellationToken)
            .ConfigureAwait(false);
        return new TextCompletion(result.Text, GenerationSource.ToFinishReason(result.FinishReason), usage);
    }

    public async IAsyncEnumerable<TextCompletionUpdate> CompleteStreamingAsync(string prompt, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        _source.CheckModelId(options);
        using var use = _source.Acquire();
        await foreach (var piece in GenerationSource.StreamAsync(use, prompt, GenerationSource.WithRequest(use.Value.Options, options), cancellationToken)
                           .ConfigureAwait(false))
            yield return piece.Result is { } result
                ? new TextCompletionUpdate(piece.Text, GenerationSource.ToFinishReason(result.FinishReason), piece.Usage)
                : new TextCompletionUpdate(piece.Text);
    }

    public void Dispose() => _source.Dispose();
}
