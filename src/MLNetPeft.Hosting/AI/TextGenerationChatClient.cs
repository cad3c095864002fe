using System.Runtime.CompilerServices;
using Microsoft.Extensions.AI;
using MLNetPeft.Hosting.Models;
using MLNetPeft.ML.Generation;
using TemplateMessage = MLNetPeft.Tokenization.ChatMessage;

namespace MLNetPeft.Hosting.AI;

/// <summary>
/// Microsoft.Extensions.AI's <see cref="IChatClient"/> over a saved generation model: the conversation is written with
/// the model's chat template (as it was fine-tuned), <see cref="ChatOptions"/> override the generation options saved
/// with the model, streaming yields the text as it is generated, and concurrent requests share batched forward passes
/// (<see cref="GenerationBatcher"/>). Over a <see cref="ModelRegistry"/> each request uses the version current when it
/// starts, so a reload never cuts one off.
/// </summary>
public sealed class TextGenerationChatClient : IChatClient
{
    private readonly GenerationSource _source;
    private readonly ChatClientMetadata _metadata;

    /// <summary>A client over <paramref name="transformer"/>, which stays the caller's (this client never disposes it).</summary>
    public TextGenerationChatClient(TextGenerationTransformer transformer, string? modelId = null)
        : this(new GenerationSource(transformer, modelId)) { }

    /// <summary>A client over the registered model <paramref name="modelName"/>, which must hold a text generation transformer.</summary>
    public TextGenerationChatClient(ModelRegistry registry, string modelName)
        : this(new GenerationSource(registry, modelName, "serve chat")) { }

    private TextGenerationChatClient(GenerationSource source)
    {
        _source = source;
        _metadata = new ChatClientMetadata("MLNetPeft", defaultModelId: source.ModelId);
    }

    /// <summary>The model id reported in responses, and the only one a request's <see cref="ChatOptions.ModelId"/> may name.</summary>
    public string? ModelId => _source.ModelId;

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var conversation = ToTemplateMessages(messages);
        _source.CheckModelId(options);
        using var use = _source.Acquire();
        var (result, usage) = await GenerationSource.GenerateAsync(use, Prompt(use.Value, conversation), GenerationSource.WithRequest(use.Value.Options, options),
            cancellationToken).ConfigureAwait(false);
        return new ChatResponse(new ChatMessage(ChatRole.Assistant, result.Text) { MessageId = GenerationSource.NewId("msg") })
        {
            ResponseId = GenerationSource.NewId("chatcmpl"),
            ModelId = ModelId,
            CreatedAt = DateTimeOffset.UtcNow,
            FinishReason = GenerationSource.ToFinishReason(result.FinishReason),
            Usage = usage,
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var conversation = ToTemplateMessages(messages);
        _source.CheckModelId(options);
        string responseId = GenerationSource.NewId("chatcmpl"), messageId = GenerationSource.NewId("msg");
        var created = DateTimeOffset.UtcNow;
        using var use = _source.Acquire();
        await foreach (var piece in GenerationSource.StreamAsync(use, Prompt(use.Value, conversation), GenerationSource.WithRequest(use.Value.Options, options),
                           cancellationToken).ConfigureAwait(false))
        {
            var update = new ChatResponseUpdate { Role = ChatRole.Assistant, ResponseId = responseId, MessageId = messageId, ModelId = ModelId, CreatedAt = created };
            if (piece.Text.Length > 0) update.Contents.Add(new TextContent(piece.Text));
            if (piece.Result is { } result)
            {
                update.Contents.Add(new UsageContent(piece.Usage!));
                update.FinishReason = GenerationSource.ToFinishReason(result.FinishReason);
            }
            yield return update;
        }
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return _metadata;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Stops this client's own batcher (over a caller's transformer); the model belongs to the caller or the registry.</summary>
    public void Dispose() => _source.Dispose();

    /// <summary>The conversation in the model's chat template, ending where the assistant's reply begins.</summary>
    private static string Prompt(TextGenerationTransformer model, IReadOnlyList<TemplateMessage> conversation) => model.Tokenizer.ChatTemplate.Apply(conversation);

    private static List<TemplateMessage> ToTemplateMessages(IEnumerable<ChatMessage> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var result = new List<TemplateMessage>();
        foreach (var (message, index) in messages.Select((m, i) => (m, i)))
        {
            if (message is null) throw new ArgumentException($"Message {index} is null.", nameof(messages));
            string role = message.Role == ChatRole.System ? "system" : message.Role == ChatRole.User ? "user" : message.Role == ChatRole.Assistant ? "assistant"
                : throw new ArgumentException($"Message {index} has role '{message.Role}'; a text generation model takes system, user and assistant messages.", nameof(messages));
            if (message.Contents.FirstOrDefault(c => c is not TextContent) is { } other)
                throw new NotSupportedException($"Message {index} holds {other.GetType().Name}; a text generation model reads text only.");
            result.Add(new TemplateMessage(role, message.Text));
        }
        if (result.Count == 0) throw new ArgumentException("The conversation holds no message.", nameof(messages));
        return result;
    }
}
