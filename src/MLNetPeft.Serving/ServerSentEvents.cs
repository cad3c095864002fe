using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;

namespace MLNetPeft.Serving;

/// <summary>OpenAI's streaming: <c>data: {json}</c> events, flushed one by one, ended by <c>data: [DONE]</c>.</summary>
internal sealed class ServerSentEvents : IAsyncDisposable
{
    private readonly HttpContext _http;

    private ServerSentEvents(HttpContext http) => _http = http;

    public static async Task<ServerSentEvents> StartAsync(HttpContext http)
    {
        http.Response.StatusCode = 200;
        http.Response.ContentType = "text/event-stream";
        http.Response.Headers.CacheControl = "no-cache";
        await http.Response.StartAsync(http.RequestAborted).ConfigureAwait(false);
        return new ServerSentEvents(http);
    }

    public Task SendAsync(JsonNode payload) => SendRawAsync(_http, payload);

    public static async Task SendRawAsync(HttpContext http, JsonNode payload)
    {
        await http.Response.WriteAsync($"data: {payload.ToJsonString()}\n\n", http.RequestAborted).ConfigureAwait(false);
        await http.Response.Body.FlushAsync(http.RequestAborted).ConfigureAwait(false);
    }

    public async Task DoneAsync()
    {
        await _http.Response.WriteAsync("data: [DONE]\n\n", _http.RequestAborted).ConfigureAwait(false);
        await _http.Response.Body.FlushAsync(_http.RequestAborted).ConfigureAwait(false);
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
