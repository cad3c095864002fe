using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Microsoft.Extensions.AI;
using MLNetPeft.Generation;
using MLNetPeft.Hosting.Models;
using MLNetPeft.ML.Generation;
using TemplateMessage = MLNetPeft.Tokenization.ChatMessage;

namespace MLNetPeft.Hosting.AI;

/// <summary>
/// Microsoft.Extensions.AI's <see cref="IChatClient"/> over a saved generation model: the conversation is written with
/// the model's chat template (as it was fine-tuned), <see cref="ChatOptions"/> become <see cref="GenerationOptions"/>
/// on top of the ones saved with the model, and streaming yields the text as it is generated. Over a
/// <see cref="ModelRegistry"/> each request uses the version current when it starts, so a reload never cuts one off.
/// </summary>
public sealed class TextGenerationChatClient : IChatClient
{
    private readonly Func<ModelUse<TextGenerationTransformer>> _acquire;
    private readonly ChatClientMetadata _metadata;

    /// <summary>A client over <paramref name="transformer"/>, which stays the caller's (this client never disposes it).</summary>
    public TextGenerationChatClient(TextGenerationTransformer transformer, string? modelId = null)
    {
        ArgumentNullException.ThrowIfNull(transformer);
        _acquire = () => new ModelUse<TextGenerationTransformer>(transformer, null);
        ModelId = modelId;
        _metadata = new ChatClientMetadata("MLNetPeft", defaultModelId: modelId);
    }

    /// <summary>A client over the registered model <paramref name="modelName"/>, which must hold a text generation transformer.</summary>
    public TextGenerationChatClient(ModelRegistry registry, string modelName)
    {
        ArgumentNullException.ThrowIfNull(registry);
        ArgumentNullException.ThrowIfNull(modelName);
        _acquire = () => registry.Use<TextGenerationTransformer>(modelName, "serve chat");
        ModelId = modelName;
        _metadata = new ChatClientMetadata("MLNetPeft", defaultModelId: modelName);
    }

    /// <summary>The model id reported in responses, and the only one a request's <see cref="ChatOptions.ModelId"/> may name.</summary>
    public string? ModelId { get; }

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var conversation = ToTemplateMessages(messages);
        CheckModelId(options);
        // Generation is CPU-bound and serialised per model: run it off the caller's thread.
        return await Task.Run(() =>
        {
            using var use = _acquire();
            var (prompt, generation) = Prepare(use.Value, conversation, options);
            var result = use.Value.Generate(prompt, generation, cancellationToken: cancellationToken);
            var message = new ChatMessage(ChatRole.Assistant, result.Text) { MessageId = NewId("msg") };
            return new ChatResponse(message)
            {
                ResponseId = NewId("chatcmpl"),
                ModelId = ModelId,
                CreatedAt = DateTimeOffset.UtcNow,
                FinishReason = ToFinishReason(result.FinishReason),
                Usage = Usage(use.Value, prompt, result),
            };
        }, cancellationToken).ConfigureAwait(false);
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var conversation = ToTemplateMessages(messages);
        CheckModelId(options);
        string responseId = NewId("chatcmpl"), messageId = NewId("msg");
        var created = DateTimeOffset.UtcNow;
        ChatResponseUpdate Update() => new() { Role = ChatRole.Assistant, ResponseId = responseId, MessageId = messageId, ModelId = ModelId, CreatedAt = created };

        var updates = Channel.CreateUnbounded<ChatResponseUpdate>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var producer = Task.Run(() =>
        {
            try
            {
                using var use = _acquire();
                var (prompt, generation) = Prepare(use.Value, conversation, options);
                var text = new StreamedText(generation.StopStrings);
                var result = use.Value.Generate(prompt, generation, token =>
                {
                    if (text.Add(token.TextDelta) is { Length: > 0 } delta)
                    {
                        var update = Update();
                        update.Contents.Add(new TextContent(delta));
                        updates.Writer.TryWrite(update);
                    }
                }, stop.Token);
                var last = Update();
                if (text.Rest(result.Text) is { Length: > 0 } rest) last.Contents.Add(new TextContent(rest));
                last.Contents.Add(new UsageContent(Usage(use.Value, prompt, result)));
                last.FinishReason = ToFinishReason(result.FinishReason);
                updates.Writer.TryWrite(last);
                updates.Writer.TryComplete();
            }
            catch (Exception e)
            {
                updates.Writer.TryComplete(e);
            }
        }, CancellationToken.None);
        try
        {
            await foreach (var update in updates.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
                yield return update;
        }
        finally
        {
            // A consumer that stops reading early ends the generation too, and the model is released before returning.
            stop.Cancel();
            await producer.ConfigureAwait(false);
        }
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return _metadata;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Nothing to release: the model belongs to the caller or the registry.</summary>
    public void Dispose() { }

    private void CheckModelId(ChatOptions? options)
    {
        if (options?.ModelId is { } requested && ModelId is not null && !string.Equals(requested, ModelId, StringComparison.OrdinalIgnoreCase))
            throw new ArgumentException($"ChatOptions.ModelId is '{requested}', but this client serves model '{ModelId}'.", nameof(options));
    }

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

    /// <summary>The prompt in the model's chat template, and the saved generation options overridden by the request's.</summary>
    private static (string Prompt, GenerationOptions Options) Prepare(TextGenerationTransformer model, IReadOnlyList<TemplateMessage> conversation, ChatOptions? options)
    {
        string prompt = model.Tokenizer.ChatTemplate.Apply(conversation);
        var saved = model.Options;
        var generation = new GenerationOptions
        {
            MaxNewTokens = saved.MaxNewTokens,
            DoSample = saved.DoSample,
            Temperature = saved.Temperature,
            TopK = saved.TopK,
            TopP = saved.TopP,
            RepetitionPenalty = saved.RepetitionPenalty,
            StopStrings = saved.StopStrings,
            StopTokenIds = saved.StopTokenIds,
            Seed = saved.Seed,
        };
        if (options is null) return (prompt, generation);
        if (options.Tools is { Count: > 0 }) throw new NotSupportedException("ChatOptions.Tools: this model does not call tools.");
        if (options.FrequencyPenalty is { } f && f != 0 || options.PresencePenalty is { } p && p != 0)
            throw new NotSupportedException("ChatOptions.FrequencyPenalty and PresencePenalty are not supported; the model's saved RepetitionPenalty applies.");
        if (options.MaxOutputTokens is { } max)
            generation.MaxNewTokens = max >= 1 ? max : throw new ArgumentOutOfRangeException(nameof(options), max, "ChatOptions.MaxOutputTokens must be at least 1.");
        // As in OpenAI's API, temperature 0 is greedy decoding; any other temperature, top-p or top-k samples.
        if (options.Temperature is { } temperature)
        {
            if (!(temperature >= 0)) throw new ArgumentOutOfRangeException(nameof(options), temperature, "ChatOptions.Temperature must be 0 or more.");
            generation.DoSample = temperature > 0;
            if (temperature > 0) generation.Temperature = temperature;
        }
        if (options.TopP is { } topP)
        {
            generation.TopP = topP is > 0 and <= 1 ? topP : throw new ArgumentOutOfRangeException(nameof(options), topP, "ChatOptions.TopP must be in (0, 1].");
            generation.DoSample |= options.Temperature is null;
        }
        if (options.TopK is { } topK)
        {
            generation.TopK = topK >= 0 ? topK : throw new ArgumentOutOfRangeException(nameof(options), topK, "ChatOptions.TopK must be 0 (off) or more.");
            generation.DoSample |= options.Temperature is null;
        }
        if (options.Seed is { } seed) generation.Seed = seed;
        if (options.StopSequences is { Count: > 0 } stops)
        {
            if (stops.Any(string.IsNullOrEmpty)) throw new ArgumentException("ChatOptions.StopSequences must not hold an empty string.", nameof(options));
            generation.StopStrings = saved.StopStrings.Concat(stops).Distinct().ToArray();
        }
        return (prompt, generation);
    }

    private static UsageDetails Usage(TextGenerationTransformer model, string prompt, GenerationResult result)
    {
        int input = model.Tokenizer.Encode(prompt).Count;
        return new UsageDetails { InputTokenCount = input, OutputTokenCount = result.TokenIds.Count, TotalTokenCount = input + result.TokenIds.Count };
    }

    private static ChatFinishReason ToFinishReason(FinishReason reason) => reason == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop;

    private static string NewId(string prefix) => $"{prefix}-{Guid.NewGuid():N}";

    /// <summary>
    /// The generator's stream of text with the stop strings taken out, so that the streamed pieces add up to the text a
    /// non-streaming call returns: text that may be the start of a stop string is held back until it is known not to be.
    /// </summary>
    private sealed class StreamedText(IReadOnlyList<string> stopStrings)
    {
        private readonly System.Text.StringBuilder _all = new();
        private int _emitted;
        private bool _stopped;

        public string Add(string delta)
        {
            if (_stopped) return "";
            _all.Append(delta);
            string all = _all.ToString();
            int safe = all.Length;
            foreach (var stop in stopStrings)
            {
                int at = all.IndexOf(stop, StringComparison.Ordinal);
                if (at >= 0) { safe = Math.Min(safe, at); _stopped = true; continue; }
                for (int keep = Math.Min(stop.Length - 1, all.Length); keep > 0; keep--)
                    if (all.AsSpan(all.Length - keep).SequenceEqual(stop.AsSpan(0, keep))) { safe = Math.Min(safe, all.Length - keep); break; }
            }
            if (safe <= _emitted) return "";
            string piece = all[_emitted..safe];
            _emitted = safe;
            return piece;
        }

        /// <summary>What of the final text has not been streamed yet.</summary>
        public string Rest(string finalText) =>
            finalText.Length > _emitted && finalText.AsSpan(0, _emitted).SequenceEqual(_all.ToString().AsSpan(0, _emitted)) ? finalText[_emitted..] : "";
    }
}
