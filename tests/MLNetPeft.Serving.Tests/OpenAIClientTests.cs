using System.ClientModel;
using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.AI;
using MLNetPeft.Hosting.AI;
using MLNetPeft.Hosting.Models;
using MLNetPeft.ML.Generation;
using OpenAI;
using OpenAI.Chat;
using OpenAI.Embeddings;
using OpenAI.Models;

namespace MLNetPeft.Serving.Tests;

/// <summary>The server as OpenAI's own .NET client and Microsoft.Extensions.AI.OpenAI's IChatClient see it.</summary>
public class OpenAIClientTests(ServerFixture server, Xunit.Abstractions.ITestOutputHelper output) : IClassFixture<ServerFixture>
{
    private static readonly ApiKeyCredential Key = new("not-checked");
    private OpenAIClientOptions Options => new() { Endpoint = new Uri(server.BaseAddress, "v1") };

    private static List<OpenAI.Chat.ChatMessage> Question(string text) => [new SystemChatMessage("Answer briefly."), new UserChatMessage(text)];

    [Fact]
    public async Task OfficialChatClientGetsTheModelsAnswerStreamedAndNot()
    {
        var chat = new ChatClient("chat", Key, Options);
        string expected = server.DirectChat(("system", "Answer briefly."), ("user", "Who is Bob?"));

        ChatCompletion completion = (await chat.CompleteChatAsync(Question("Who is Bob?"))).Value;
        Assert.Equal(expected, completion.Content.Single().Text);
        Assert.Equal(ChatMessageRole.Assistant, completion.Role);
        Assert.Equal("chat", completion.Model);
        Assert.True(completion.Usage.OutputTokenCount is > 0 and <= 16);
        Assert.True(completion.Usage.InputTokenCount > 0);

        var streamed = new StringBuilder();
        int updates = 0;
        OpenAI.Chat.ChatFinishReason? finish = null;
        ChatTokenUsage? usage = null;
        await foreach (var update in chat.CompleteChatStreamingAsync(Question("Who is Bob?")))
        {
            updates++;
            foreach (var part in update.ContentUpdate) streamed.Append(part.Text);
            finish ??= update.FinishReason;
            usage ??= update.Usage;
        }
        Assert.Equal(expected, streamed.ToString());
        Assert.True(updates > 2, "server-sent events arrive one by one");
        Assert.Equal(completion.FinishReason, finish);
        Assert.Equal(completion.Usage.OutputTokenCount, usage?.OutputTokenCount);

        // Request options reach the generator: at most 3 tokens, cut at the length limit.
        var short3 = (await chat.CompleteChatAsync(Question("Who is Bob?"), new ChatCompletionOptions { MaxOutputTokenCount = 3, Temperature = 0 })).Value;
        Assert.True(short3.Usage.OutputTokenCount <= 3);
        Assert.StartsWith(short3.Content.Single().Text, expected);
    }

    [Fact]
    public async Task ExtensionsAIChatClientOverOpenAIWorksInAPipeline()
    {
        IChatClient client = new ChatClient("chat", Key, Options).AsIChatClient();
        string expected = server.DirectChat(("user", "Where does Alice live?"));
        var response = await client.GetResponseAsync("Where does Alice live?");
        Assert.Equal(expected, response.Text);
        var streamed = new StringBuilder();
        await foreach (var update in client.GetStreamingResponseAsync("Where does Alice live?")) streamed.Append(update.Text);
        Assert.Equal(expected, streamed.ToString());
    }

    [Fact]
    public async Task EmbeddingsAndModelsThroughTheOfficialClient()
    {
        var embeddings = new EmbeddingClient("embed", Key, Options);
        string[] texts = ["a cat sat on the mat", "stock markets fell sharply"];
        // The official client asks for base64 by default.
        var generated = (await embeddings.GenerateEmbeddingsAsync(texts)).Value;
        Assert.Equal(texts.Length, generated.Count);
        for (int i = 0; i < texts.Length; i++)
        {
            var expected = server.Embedder.Embed(texts[i]);
            var actual = generated[i].ToFloats().ToArray();
            Assert.Equal(expected.Length, actual.Length);
            Assert.True(expected.Zip(actual).Max(x => Math.Abs(x.First - x.Second)) < 1e-5);
        }
        var generator = embeddings.AsIEmbeddingGenerator();
        var viaExtensions = await generator.GenerateVectorAsync(texts[0]);
        Assert.True(server.Embedder.Embed(texts[0]).Zip(viaExtensions.ToArray()).Max(x => Math.Abs(x.First - x.Second)) < 1e-5);

        var models = (await new OpenAIModelClient(Key, Options).GetModelsAsync()).Value.Select(m => m.Id).Order().ToArray();
        Assert.Equal(["chat", "embed"], models);
    }

    [Fact]
    public async Task LegacyCompletionsStreamedAndNot()
    {
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        const string prompt = "### Instruction: Where does Alice live?\n### Response:";
        string expected = server.Generator.Generate(prompt, ServerFixture.Saved).Text;
        var json = await Post(http, "v1/completions", new { model = "chat", prompt });
        Assert.Equal(HttpStatusCode.OK, json.Status);
        Assert.Equal("text_completion", json.Body.GetProperty("object").GetString());
        Assert.Equal(expected, json.Body.GetProperty("choices")[0].GetProperty("text").GetString());

        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = JsonContent(new { model = "chat", prompt, stream = true }) };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        var events = (await response.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal("data: [DONE]", events[^1]);
        string streamed = string.Concat(events[..^1].Select(e => JsonDocument.Parse(e["data: ".Length..]).RootElement.GetProperty("choices")[0].GetProperty("text").GetString()));
        Assert.Equal(expected, streamed);
    }

    [Fact]
    public async Task BadRequestsGetOpenAIErrorsAndTheServerKeepsServing()
    {
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        async Task Expect(HttpStatusCode status, string? code, string? param, string messagePart, HttpContent content, string path = "v1/chat/completions")
        {
            using var response = await http.PostAsync(path, content);
            var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
            Assert.Equal(status, response.StatusCode);
            Assert.Contains(messagePart, body.GetProperty("message").GetString());
            Assert.Equal(status == HttpStatusCode.InternalServerError ? "server_error" : "invalid_request_error", body.GetProperty("type").GetString());
            if (code is not null) Assert.Equal(code, body.GetProperty("code").GetString());
            if (param is not null) Assert.Equal(param, body.GetProperty("param").GetString());
        }
        var hello = new[] { new { role = "user", content = "hello" } };
        await Expect(HttpStatusCode.BadRequest, null, null, "not valid JSON", new StringContent("{\"model\": \"chat\", ", Encoding.UTF8, "application/json"));
        await Expect(HttpStatusCode.BadRequest, null, "model", "'model' is required", JsonContent(new { messages = hello }));
        await Expect(HttpStatusCode.NotFound, "model_not_found", "model", "'gpt-4o' does not exist", JsonContent(new { model = "gpt-4o", messages = hello }));
        await Expect(HttpStatusCode.BadRequest, "model_not_supported", "model", "not a text generation model", JsonContent(new { model = "embed", messages = hello }));
        await Expect(HttpStatusCode.BadRequest, "context_length_exceeded", null, "exceeds the model's context", JsonContent(new { model = "chat", messages = hello, max_tokens = 100_000 }));
        await Expect(HttpStatusCode.BadRequest, null, "n", "one choice", JsonContent(new { model = "chat", messages = hello, n = 2 }));
        await Expect(HttpStatusCode.BadRequest, null, "messages[0].role", "'tool'", JsonContent(new { model = "chat", messages = new[] { new { role = "tool", content = "1" } } }));
        await Expect(HttpStatusCode.BadRequest, null, "temperature", "[0, 2]", JsonContent(new { model = "chat", messages = hello, temperature = 5 }));
        await Expect(HttpStatusCode.BadRequest, null, "encoding_format", "'float' or 'base64'", JsonContent(new { model = "embed", input = "x", encoding_format = "int8" }), "v1/embeddings");
        await Expect(HttpStatusCode.BadRequest, "model_not_supported", null, "not an embedding model", JsonContent(new { model = "chat", input = "x" }), "v1/embeddings");

        // The official client sees the same errors as exceptions with the status.
        var missing = await Assert.ThrowsAsync<ClientResultException>(() => new ChatClient("nope", Key, Options).CompleteChatAsync(Question("hi")));
        Assert.Equal(404, missing.Status);
        // And the server still answers.
        Assert.NotNull((await new ChatClient("chat", Key, Options).CompleteChatAsync(Question("Who is Bob?"))).Value.Content.Single().Text);
    }

    [Fact]
    public async Task LoadTestConcurrentClientsAreBatchedWithNoFailure()
    {
        const int Requests = 48, Clients = 16;
        var chat = new ChatClient("chat", Key, Options);
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 12, Temperature = 0 };
        string[] questions = [.. Enumerable.Range(0, Requests).Select(i => $"Who is person {i}?")];
        long Batches() { using var use = server.Registry.Use<TextGenerationTransformer>("chat", "test"); return GenerationBatcher.For(use).Batches; }
        long RequestsServed() { using var use = server.Registry.Use<TextGenerationTransformer>("chat", "test"); return GenerationBatcher.For(use).Requests; }

        async Task<(double Seconds, double[] Latencies, int Failures, string[] Texts)> Run(int concurrency)
        {
            var latencies = new double[Requests];
            var texts = new string[Requests];
            int failures = 0, next = -1;
            using var limit = new CancellationTokenSource(TimeSpan.FromMinutes(3));
            var clock = Stopwatch.StartNew();
            await Task.WhenAll(Enumerable.Range(0, concurrency).Select(async _ =>
            {
                for (int i; (i = Interlocked.Increment(ref next)) < Requests;)
                {
                    var one = Stopwatch.StartNew();
                    try { texts[i] = (await chat.CompleteChatAsync(Question(questions[i]), options, limit.Token)).Value.Content.Single().Text; }
                    catch (Exception) { Interlocked.Increment(ref failures); }
                    latencies[i] = one.Elapsed.TotalMilliseconds;
                }
            }));
            return (clock.Elapsed.TotalSeconds, latencies, failures, texts);
        }
        static double Percentile(double[] values, double p) { var sorted = values.Order().ToArray(); return sorted[(int)Math.Ceiling(p * sorted.Length) - 1]; }

        var sequential = await Run(1);
        long batchesBefore = Batches(), servedBefore = RequestsServed();
        var concurrent = await Run(Clients);
        long batches = Batches() - batchesBefore, served = RequestsServed() - servedBefore;
        int agree = sequential.Texts.Zip(concurrent.Texts).Count(x => x.First == x.Second);
        output.WriteLine($"{Requests} requests of up to 12 tokens: sequential {Requests / sequential.Seconds:F1} req/s (p50 {Percentile(sequential.Latencies, 0.5):F0} ms, " +
            $"p99 {Percentile(sequential.Latencies, 0.99):F0} ms); {Clients} clients {Requests / concurrent.Seconds:F1} req/s (p50 {Percentile(concurrent.Latencies, 0.5):F0} ms, " +
            $"p99 {Percentile(concurrent.Latencies, 0.99):F0} ms); throughput ratio {sequential.Seconds / concurrent.Seconds:F2}; {served} requests in {batches} batches " +
            $"(mean {served / (double)batches:F1}); failures {sequential.Failures} + {concurrent.Failures}; batched answers equal to sequential ones: {agree}/{Requests}");
        Assert.Equal(0, sequential.Failures + concurrent.Failures);
        Assert.Equal(Requests, served);
        Assert.True(batches < served, $"{served} requests in {batches} batches: concurrent requests should share batches");
    }

    private static StringContent JsonContent(object body) => new(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json");

    private static async Task<(HttpStatusCode Status, JsonElement Body)> Post(HttpClient http, string path, object body)
    {
        using var response = await http.PostAsync(path, JsonContent(body));
        return (response.StatusCode, JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.Clone());
    }
}
