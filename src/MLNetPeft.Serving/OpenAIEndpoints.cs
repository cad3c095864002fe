using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using MLNetPeft.Hosting.AI;

namespace MLNetPeft.Serving;

/// <summary>
/// OpenAI's REST API over the registered models (<c>AddMLNetPeftModels</c>): <c>/v1/chat/completions</c> and
/// <c>/v1/completions</c> (both also streamed as server-sent events), <c>/v1/embeddings</c> and <c>/v1/models</c>. Bodies
/// and errors have OpenAI's shape, so its clients work unchanged; concurrent generation requests share batched forward
/// passes. A bad request gets OpenAI's error body with status 400 (404 for an unknown model); nothing a client sends
/// takes the server down.
/// </summary>
public static class OpenAIEndpoints
{
    /// <summary>Registers what the endpoints need (the models must be registered with <c>AddMLNetPeftModels</c>).</summary>
    public static IServiceCollection AddOpenAIEndpoints(this IServiceCollection services) => services.AddSingleton<ServedModels>();

    public static IEndpointRouteBuilder MapOpenAIEndpoints(this IEndpointRouteBuilder endpoints, string prefix = "/v1")
    {
        var group = endpoints.MapGroup(prefix);
        group.MapGet("/models", (ServedModels served) => Results.Json(new JsonObject
        {
            ["object"] = "list",
            ["data"] = new JsonArray(served.Registry.Names.Select(n => (JsonNode)ModelObject(served, n)).ToArray()),
        }));
        group.MapGet("/models/{id}", (string id, ServedModels served, HttpContext http) => Guarded(http, async () =>
        {
            string name = served.Registry.Names.FirstOrDefault(n => string.Equals(n, id, StringComparison.OrdinalIgnoreCase))
                ?? throw new OpenAIRequestException(404, $"The model '{id}' does not exist.", "model", "model_not_found");
            await http.Response.WriteAsJsonAsync(ModelObject(served, name), http.RequestAborted).ConfigureAwait(false);
        }));
        group.MapPost("/chat/completions", (HttpContext http, ServedModels served) => Guarded(http, () => ChatCompletions(http, served)));
        group.MapPost("/completions", (HttpContext http, ServedModels served) => Guarded(http, () => Completions(http, served)));
        group.MapPost("/embeddings", (HttpContext http, ServedModels served) => Guarded(http, () => Embeddings(http, served)));
        return endpoints;
    }

    private static JsonObject ModelObject(ServedModels served, string name) => new()
    {
        ["id"] = name,
        ["object"] = "model",
        ["created"] = new DateTimeOffset(File.GetLastWriteTimeUtc(served.Registry.GetRegistration(name).Path!)).ToUnixTimeSeconds(),
        ["owned_by"] = "mlnetpeft",
    };

    private static async Task ChatCompletions(HttpContext http, ServedModels served)
    {
        var body = await OpenAIJson.ReadBodyAsync(http.Request.Body, http.RequestAborted).ConfigureAwait(false);
        string model = body.RequiredString("model");
        var messages = ChatMessages(body);
        var options = GenerationRequest(body, model);
        var client = served.Chat(model);
        string id = $"chatcmpl-{Guid.NewGuid():N}";
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        if (!body.OptionalBool("stream"))
        {
            var response = await client.GetResponseAsync(messages, options, http.RequestAborted).ConfigureAwait(false);
            await http.Response.WriteAsJsonAsync(new JsonObject
            {
                ["id"] = id, ["object"] = "chat.completion", ["created"] = created, ["model"] = model,
                ["choices"] = new JsonArray(new JsonObject
                {
                    ["index"] = 0,
                    ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = response.Text, ["refusal"] = null },
                    ["logprobs"] = null,
                    ["finish_reason"] = FinishReason(response.FinishReason),
                }),
                ["usage"] = Usage(response.Usage),
            }, http.RequestAborted).ConfigureAwait(false);
            return;
        }
        bool includeUsage = body.Has("stream_options") && body.GetProperty("stream_options").OptionalBool("include_usage");
        JsonObject Chunk(JsonObject delta, string? finish) => new()
        {
            ["id"] = id, ["object"] = "chat.completion.chunk", ["created"] = created, ["model"] = model,
            ["choices"] = new JsonArray(new JsonObject { ["index"] = 0, ["delta"] = delta, ["logprobs"] = null, ["finish_reason"] = finish }),
        };
        await using var events = await ServerSentEvents.StartAsync(http).ConfigureAwait(false);
        await events.SendAsync(Chunk(new JsonObject { ["role"] = "assistant", ["content"] = "" }, null)).ConfigureAwait(false);
        UsageDetails? usage = null;
        await foreach (var update in client.GetStreamingResponseAsync(messages, options, http.RequestAborted).ConfigureAwait(false))
        {
            usage ??= update.Contents.OfType<UsageContent>().FirstOrDefault()?.Details;
            if (update.Text.Length > 0) await events.SendAsync(Chunk(new JsonObject { ["content"] = update.Text }, null)).ConfigureAwait(false);
            if (update.FinishReason is { } finish) await events.SendAsync(Chunk(new JsonObject(), FinishReason(finish))).ConfigureAwait(false);
        }
        if (includeUsage)
            await events.SendAsync(new JsonObject
            {
                ["id"] = id, ["object"] = "chat.completion.chunk", ["created"] = created, ["model"] = model, ["choices"] = new JsonArray(), ["usage"] = Usage(usage),
            }).ConfigureAwait(false);
        await events.DoneAsync().ConfigureAwait(false);
    }

    private static async Task Completions(HttpContext http, ServedModels served)
    {
        var body = await OpenAIJson.ReadBodyAsync(http.Request.Body, http.RequestAborted).ConfigureAwait(false);
        string model = body.RequiredString("model");
        var prompts = body.OptionalStrings("prompt") ?? throw OpenAIRequestException.Invalid("'prompt' is required: a string or an array of strings.", "prompt");
        if (prompts.Count == 0) throw OpenAIRequestException.Invalid("'prompt' holds no prompt.", "prompt");
        if (body.OptionalBool("echo")) throw OpenAIRequestException.Invalid("'echo' is not supported.", "echo");
        if (body.Has("logprobs")) throw OpenAIRequestException.Invalid("'logprobs' is not supported.", "logprobs");
        var options = GenerationRequest(body, model);
        var client = served.Completion(model);
        string id = $"cmpl-{Guid.NewGuid():N}";
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        JsonObject Choice(int index, string text, string? finish) => new() { ["text"] = text, ["index"] = index, ["logprobs"] = null, ["finish_reason"] = finish };
        if (!body.OptionalBool("stream"))
        {
            // Every prompt of the request is queued at once, so they share batches.
            var completions = await Task.WhenAll(prompts.Select(p => client.CompleteAsync(p, options, http.RequestAborted))).ConfigureAwait(false);
            await http.Response.WriteAsJsonAsync(new JsonObject
            {
                ["id"] = id, ["object"] = "text_completion", ["created"] = created, ["model"] = model,
                ["choices"] = new JsonArray(completions.Select((c, i) => (JsonNode)Choice(i, c.Text, FinishReason(c.FinishReason))).ToArray()),
                ["usage"] = Usage(new UsageDetails
                {
                    InputTokenCount = completions.Sum(c => c.Usage.InputTokenCount), OutputTokenCount = completions.Sum(c => c.Usage.OutputTokenCount),
                    TotalTokenCount = completions.Sum(c => c.Usage.TotalTokenCount),
                }),
            }, http.RequestAborted).ConfigureAwait(false);
            return;
        }
        if (prompts.Count > 1) throw OpenAIRequestException.Invalid("Streaming takes one prompt per request.", "prompt");
        await using var events = await ServerSentEvents.StartAsync(http).ConfigureAwait(false);
        await foreach (var update in client.CompleteStreamingAsync(prompts[0], options, http.RequestAborted).ConfigureAwait(false))
        {
            if (update.Text.Length == 0 && update.FinishReason is null) continue;
            await events.SendAsync(new JsonObject
            {
                ["id"] = id, ["object"] = "text_completion", ["created"] = created, ["model"] = model,
                ["choices"] = new JsonArray(Choice(0, update.Text, update.FinishReason is { } f ? FinishReason(f) : null)),
            }).ConfigureAwait(false);
        }
        await events.DoneAsync().ConfigureAwait(false);
    }

    private static async Task Embeddings(HttpContext http, ServedModels served)
    {
        var body = await OpenAIJson.ReadBodyAsync(http.Request.Body, http.RequestAborted).ConfigureAwait(false);
        string model = body.RequiredString("model");
        var inputs = body.Has("input") && body.GetProperty("input").ValueKind == JsonValueKind.Array && body.GetProperty("input").EnumerateArray().Any(e => e.ValueKind == JsonValueKind.Number)
            ? throw OpenAIRequestException.Invalid("'input' as token ids is not supported; send text.", "input")
            : body.OptionalStrings("input") ?? throw OpenAIRequestException.Invalid("'input' is required: a string or an array of strings.", "input");
        if (inputs.Count is 0 or > 2048) throw OpenAIRequestException.Invalid($"'input' must hold 1 to 2048 texts; it holds {inputs.Count}.", "input");
        string format = body.OptionalString("encoding_format") ?? "float";
        if (format is not ("float" or "base64")) throw OpenAIRequestException.Invalid($"'encoding_format' is '{format}'; it must be 'float' or 'base64'.", "encoding_format");
        var generator = served.Embedding(model);
        var options = body.OptionalInt("dimensions") is { } dimensions ? new EmbeddingGenerationOptions { Dimensions = dimensions } : null;
        var embeddings = await generator.GenerateAsync(inputs, options, http.RequestAborted).ConfigureAwait(false);
        await http.Response.WriteAsJsonAsync(new JsonObject
        {
            ["object"] = "list",
            ["data"] = new JsonArray(embeddings.Select((e, i) => (JsonNode)new JsonObject
            {
                ["object"] = "embedding",
                ["index"] = i,
                // base64: the float32 values' little-endian bytes, as OpenAI sends them (its .NET client asks for this).
                ["embedding"] = format == "base64"
                    ? Convert.ToBase64String(System.Runtime.InteropServices.MemoryMarshal.AsBytes(e.Vector.Span))
                    : new JsonArray(e.Vector.ToArray().Select(v => (JsonNode)v).ToArray()),
            }).ToArray()),
            ["model"] = model,
            ["usage"] = new JsonObject { ["prompt_tokens"] = embeddings.Usage?.InputTokenCount ?? 0, ["total_tokens"] = embeddings.Usage?.InputTokenCount ?? 0 },
        }, http.RequestAborted).ConfigureAwait(false);
    }

    private static List<ChatMessage> ChatMessages(JsonElement body)
    {
        if (!body.TryGetProperty("messages", out var messages) || messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0)
            throw OpenAIRequestException.Invalid("'messages' is required and must be a non-empty array.", "messages");
        var result = new List<ChatMessage>();
        int index = 0;
        foreach (var message in messages.EnumerateArray())
        {
            string param = $"messages[{index++}]";
            if (message.ValueKind != JsonValueKind.Object) throw OpenAIRequestException.Invalid($"'{param}' must be an object.", param);
            var role = message.OptionalString("role") switch
            {
                "system" or "developer" => ChatRole.System,
                "user" => ChatRole.User,
                "assistant" => ChatRole.Assistant,
                var other => throw OpenAIRequestException.Invalid($"'{param}.role' is '{other}'; this model takes system, developer, user and assistant messages.", $"{param}.role"),
            };
            string text = !message.TryGetProperty("content", out var content) || content.ValueKind == JsonValueKind.Null ? ""
                : content.ValueKind == JsonValueKind.String ? content.GetString()!
                : content.ValueKind == JsonValueKind.Array ? string.Concat(content.EnumerateArray().Select(part =>
                    part.ValueKind == JsonValueKind.Object && part.OptionalString("type") == "text" ? part.OptionalString("text") ?? ""
                    : throw OpenAIRequestException.Invalid($"'{param}.content' may hold text parts only.", $"{param}.content")))
                : throw OpenAIRequestException.Invalid($"'{param}.content' must be a string or an array of text parts.", $"{param}.content");
            result.Add(new ChatMessage(role, text));
        }
        return result;
    }

    /// <summary>The generation fields shared by both generation endpoints, as <see cref="ChatOptions"/>.</summary>
    private static ChatOptions GenerationRequest(JsonElement body, string model)
    {
        if (body.OptionalInt("n") is { } n && n != 1) throw OpenAIRequestException.Invalid($"'n' is {n}; this server returns one choice per prompt.", "n");
        foreach (var unsupported in new[] { "tools", "functions", "tool_choice", "function_call" })
            if (body.Has(unsupported) && !(body.GetProperty(unsupported).ValueKind == JsonValueKind.Array && body.GetProperty(unsupported).GetArrayLength() == 0))
                throw OpenAIRequestException.Invalid($"'{unsupported}' is not supported: the model does not call tools.", unsupported);
        if (body.Has("response_format") && body.GetProperty("response_format").OptionalString("type") is { } format && format != "text")
            throw OpenAIRequestException.Invalid($"'response_format' '{format}' is not supported; only text.", "response_format");
        if (body.Has("logprobs") && body.GetProperty("logprobs").ValueKind == JsonValueKind.True)
            throw OpenAIRequestException.Invalid("'logprobs' is not supported.", "logprobs");
        var stops = body.OptionalStrings("stop");
        if (stops is { Count: > 4 }) throw OpenAIRequestException.Invalid($"'stop' holds {stops.Count} sequences; at most 4.", "stop");
        var maxTokens = body.OptionalInt("max_completion_tokens") ?? body.OptionalInt("max_tokens");
        if (maxTokens is < 1) throw OpenAIRequestException.Invalid($"'max_tokens' is {maxTokens}; it must be at least 1.", "max_tokens");
        var temperature = body.OptionalNumber("temperature");
        if (temperature is < 0 or > 2) throw OpenAIRequestException.Invalid($"'temperature' is {temperature}; it must be in [0, 2].", "temperature");
        var topP = body.OptionalNumber("top_p");
        if (topP is <= 0 or > 1) throw OpenAIRequestException.Invalid($"'top_p' is {topP}; it must be in (0, 1].", "top_p");
        var frequency = body.OptionalNumber("frequency_penalty");
        var presence = body.OptionalNumber("presence_penalty");
        if (frequency is { } f && f != 0) throw OpenAIRequestException.Invalid("'frequency_penalty' is not supported.", "frequency_penalty");
        if (presence is { } p && p != 0) throw OpenAIRequestException.Invalid("'presence_penalty' is not supported.", "presence_penalty");
        return new ChatOptions
        {
            ModelId = model, MaxOutputTokens = maxTokens, Temperature = temperature, TopP = topP, Seed = body.OptionalLong("seed"),
            StopSequences = stops?.ToList(),
        };
    }

    private static JsonObject Usage(UsageDetails? usage) => new()
    {
        ["prompt_tokens"] = usage?.InputTokenCount ?? 0,
        ["completion_tokens"] = usage?.OutputTokenCount ?? 0,
        ["total_tokens"] = usage?.TotalTokenCount ?? 0,
    };

    private static string FinishReason(ChatFinishReason? reason) => reason == ChatFinishReason.Length ? "length" : "stop";

    /// <summary>Runs a handler, turning what it throws into OpenAI's error body; a client that went away gets nothing.</summary>
    private static async Task Guarded(HttpContext http, Func<Task> handler)
    {
        try
        {
            await handler().ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (http.RequestAborted.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            var (status, type, param, code) = e switch
            {
                OpenAIRequestException r => (r.Status, r.Type, r.Param, r.Code),
                ContextLengthExceededException => (400, "invalid_request_error", "messages", "context_length_exceeded"),
                ArgumentException or NotSupportedException => (400, "invalid_request_error", (string?)null, (string?)null),
                _ => (500, "server_error", null, null),
            };
            string message = status == 500 ? "The server failed to handle the request; its log has the details." : e.Message;
            if (status == 500) http.RequestServices.GetService<ILoggerFactory>()?.CreateLogger(typeof(OpenAIEndpoints)).LogError(e, "Request {Path} failed.", http.Request.Path);
            var error = new JsonObject { ["error"] = new JsonObject { ["message"] = message, ["type"] = type, ["param"] = param, ["code"] = code } };
            if (http.Response.HasStarted)
            {
                // Mid-stream the status is sent already: the error goes out as the last event.
                await ServerSentEvents.SendRawAsync(http, error).ConfigureAwait(false);
                return;
            }
            http.Response.StatusCode = status;
            await http.Response.WriteAsJsonAsync(error).ConfigureAwait(false);
        }
    }
}
