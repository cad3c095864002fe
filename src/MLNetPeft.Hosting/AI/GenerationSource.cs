using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Microsoft.Extensions.AI;
using MLNetPeft.Generation;
using MLNetPeft.Hosting.Models;
using MLNetPeft.ML.Generation;

namespace MLNetPeft.Hosting.AI;

/// <summary>A piece of a streamed generation: text, and with the last piece the result and its usage.</summary>
internal readonly record struct GenerationPiece(string Text, GenerationResult? Result = null, UsageDetails? Usage = null);

/// <summary>
/// Where the chat and completion clients get their model: a caller's transformer, or the current version of a
/// registered model (leased per request, so a reload never cuts one off). Both run requests through the model's
/// <see cref="GenerationBatcher"/> and map <see cref="ChatOptions"/> onto the saved <see cref="GenerationOptions"/>.
/// </summary>
internal sealed class GenerationSource : IDisposable
{
    private readonly Func<ModelUse<TextGenerationTransformer>> _acquire;
    private readonly Dictionary<Type, object>? _owned;

    public GenerationSource(TextGenerationTransformer transformer, string? modelId)
    {
        ArgumentNullException.ThrowIfNull(transformer);
        var owned = _owned = [];
        _acquire = () => new ModelUse<TextGenerationTransformer>(transformer, owned);
        ModelId = modelId;
    }

    public GenerationSource(ModelRegistry registry, string modelName, string purpose)
    {
        ArgumentNullException.ThrowIfNull(registry);
        ArgumentNullException.ThrowIfNull(modelName);
        registry.GetRegistration(modelName); // an unknown name fails here, at registration, not at the first request
        _acquire = () => registry.Use<TextGenerationTransformer>(modelName, purpose);
        ModelId = modelName;
    }

    public string? ModelId { get; }

    public ModelUse<TextGenerationTransformer> Acquire() => _acquire();

    public void CheckModelId(ChatOptions? options)
    {
        if (options?.ModelId is { } requested && ModelId is not null && !string.Equals(requested, ModelId, StringComparison.OrdinalIgnoreCase))
            throw new ArgumentException($"ChatOptions.ModelId is '{requested}', but this client serves model '{ModelId}'.", nameof(options));
    }

    /// <summary>Generates for <paramref name="prompt"/>, batched with other requests of the model.</summary>
    public static async Task<(GenerationResult Result, UsageDetails Usage)> GenerateAsync(ModelUse<TextGenerationTransformer> use, string prompt,
        GenerationOptions options, CancellationToken cancellationToken)
    {
        var result = await GenerationBatcher.For(use).GenerateAsync(prompt, options, cancellationToken: cancellationToken).ConfigureAwait(false);
        return (result, Usage(use.Value, prompt, result));
    }

    /// <summary>
    /// Streams the text for <paramref name="prompt"/>; the pieces add up to the text <see cref="GenerateAsync"/> returns,
    /// and the last one carries the result. A consumer that stops reading early cancels the request.
    /// </summary>
    public static async IAsyncEnumerable<GenerationPiece> StreamAsync(ModelUse<TextGenerationTransformer> use, string prompt, GenerationOptions options,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var pieces = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var text = new StreamedText(options.StopStrings);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var generating = GenerationBatcher.For(use).GenerateAsync(prompt, options, delta =>
        {
            if (text.Add(delta) is { Length: > 0 } piece) pieces.Writer.TryWrite(piece);
        }, stop.Token);
        _ = generating.ContinueWith(_ => pieces.Writer.TryComplete(), TaskScheduler.Default);
        try
        {
            await foreach (var piece in pieces.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
                yield return new GenerationPiece(piece);
            var result = await generating.ConfigureAwait(false);
            yield return new GenerationPiece(text.Rest(result.Text), result, Usage(use.Value, prompt, result));
        }
        finally
        {
            stop.Cancel();
        }
    }

    /// <summary>The saved generation options of the model, overridden by a request's.</summary>
    public static GenerationOptions WithRequest(GenerationOptions saved, ChatOptions? options)
    {
        var generation = saved.Copy();
        if (options is null) return generation;
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
        return generation;
    }

    public static ChatFinishReason ToFinishReason(FinishReason reason) => reason == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop;

    public static string NewId(string prefix) => $"{prefix}-{Guid.NewGuid():N}";

    private static UsageDetails Usage(TextGenerationTransformer model, string prompt, GenerationResult result)
    {
        int input = model.Tokenizer.Encode(prompt).Count;
        return new UsageDetails { InputTokenCount = input, OutputTokenCount = result.TokenIds.Count, TotalTokenCount = input + result.TokenIds.Count };
    }

    /// <summary>Stops the batcher of a caller's transformer; a registered model's belongs to its version.</summary>
    public void Dispose()
    {
        if (_owned is null) return;
        lock (_owned)
        {
            foreach (var shared in _owned.Values) (shared as IDisposable)?.Dispose();
            _owned.Clear();
        }
    }

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
