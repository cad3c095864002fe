using System.Collections.Concurrent;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.BaseModel;
using MLNetPeft.Generation;
using MLNetPeft.Hosting.AI;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Retrieval;
using TemplateMessage = MLNetPeft.Tokenization.ChatMessage;

namespace MLNetPeft.Hosting.Tests;

public class ChatAndEmbeddingClientTests
{
    public sealed class PromptRow
    {
        public string Prompt { get; set; } = "";
    }

    public sealed class TextRow
    {
        public string Text { get; set; } = "";
    }

    internal static readonly GenerationOptions Saved = new() { MaxNewTokens = 12, StopStrings = ["\n"] };

    /// <summary>The bundled model behind GenerateText with the saved options, and a chat client over it.</summary>
    internal sealed class BundledChat : IDisposable
    {
        private readonly MLNetPeft.Architectures.CausalLanguageModel _model = BundledBaseModel.Load();

        public BundledChat()
        {
            var ml = new MLContext(seed: 1);
            Generator = ml.Transforms.Text.GenerateText(_model, BundledBaseModel.LoadTokenizer(), options: Saved)
                .Fit(ml.Data.LoadFromEnumerable(new[] { new PromptRow { Prompt = "x" } }));
            Client = new TextGenerationChatClient(Generator, "bundled");
        }

        public TextGenerationTransformer Generator { get; }
        public IChatClient Client { get; }

        // The transformer does not dispose the model it was given: that is ours.
        public void Dispose()
        {
            Client.Dispose();
            Generator.Dispose();
            _model.Dispose();
        }
    }

    internal static ChatMessage[] Question(string text) => [new(ChatRole.System, "Answer briefly."), new(ChatRole.User, text)];

    private static async Task<string> Streamed(IChatClient client, IEnumerable<ChatMessage> messages, ChatOptions? options, List<ChatResponseUpdate>? updates = null)
    {
        var text = new System.Text.StringBuilder();
        await foreach (var update in client.GetStreamingResponseAsync(messages, options))
        {
            updates?.Add(update);
            text.Append(update.Text);
        }
        return text.ToString();
    }

    [Fact]
    public async Task ChatAnswersWithTheModelsTemplateAndStreamingAddsUpToTheSameText()
    {
        using var bundled = new BundledChat();
        var (generator, client) = (bundled.Generator, bundled.Client);
        var question = Question("Where does Alice live?");
        var response = await client.GetResponseAsync(question);
        // What the model itself generates after the conversation in its chat template, with the saved options.
        string prompt = generator.Tokenizer.ChatTemplate.Apply([new TemplateMessage("system", "Answer briefly."), new TemplateMessage("user", "Where does Alice live?")]);
        var direct = generator.Generate(prompt, Saved);
        Assert.Equal(direct.Text, response.Text);
        Assert.Equal(ChatRole.Assistant, response.Messages.Single().Role);
        Assert.Equal("bundled", response.ModelId);
        Assert.Equal(direct.FinishReason == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop, response.FinishReason);
        Assert.Equal(direct.TokenIds.Count, response.Usage!.OutputTokenCount);
        Assert.Equal(generator.Tokenizer.Encode(prompt).Count, response.Usage.InputTokenCount);

        var updates = new List<ChatResponseUpdate>();
        Assert.Equal(response.Text, await Streamed(client, question, null, updates));
        Assert.True(updates.Count > 1, "the text arrives in pieces");
        Assert.Single(updates.Select(u => u.ResponseId).Distinct());
        Assert.Equal(response.FinishReason, updates[^1].FinishReason);
        Assert.Equal(response.Usage.OutputTokenCount, updates.SelectMany(u => u.Contents).OfType<UsageContent>().Single().Details.OutputTokenCount);

        // A stop sequence of the request: the text is cut before it, streamed or not (pieces are held back while they
        // could still be the start of it).
        foreach (var stop in new[] { " ", "e", "in " })
        {
            var options = new ChatOptions { StopSequences = [stop], MaxOutputTokens = 24 };
            var cut = await client.GetResponseAsync(question, options);
            Assert.DoesNotContain(stop, cut.Text);
            Assert.Equal(cut.Text, await Streamed(client, question, options));
        }
    }

    [Fact]
    public async Task ChatOptionsMapOntoGenerationAndUnsupportedOnesAreNamed()
    {
        using var bundled = new BundledChat();
        var client = bundled.Client;
        var question = Question("Who is Bob?");

        var greedy = await client.GetResponseAsync(question);
        Assert.Equal(greedy.Text, (await client.GetResponseAsync(question, new ChatOptions { Temperature = 0 })).Text);

        var three = await client.GetResponseAsync(question, new ChatOptions { MaxOutputTokens = 3, StopSequences = ["\u0001"] });
        Assert.True(three.Usage!.OutputTokenCount <= 3);

        // Sampling with a seed repeats; temperature and seed both reach the generator.
        var sampled = new ChatOptions { Temperature = 1.5f, Seed = 7, MaxOutputTokens = 24 };
        var first = await client.GetResponseAsync(question, sampled);
        var second = await client.GetResponseAsync(question, sampled);
        Assert.Equal(first.Text, second.Text);
        Assert.Equal(first.Text, await Streamed(client, question, sampled));
        var others = await Task.WhenAll(Enumerable.Range(8, 4).Select(seed => client.GetResponseAsync(question, new ChatOptions { Temperature = 1.5f, Seed = seed, MaxOutputTokens = 24 })));
        Assert.Contains(others, o => o.Text != first.Text);

        Assert.Contains("serves model 'bundled'", (await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync(question, new ChatOptions { ModelId = "gpt-4o" }))).Message);
        Assert.Contains("Tools", (await Assert.ThrowsAsync<NotSupportedException>(() =>
            client.GetResponseAsync(question, new ChatOptions { Tools = [AIFunctionFactory.Create(() => 1, "one")] }))).Message);
        Assert.Contains("Temperature", (await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => client.GetResponseAsync(question, new ChatOptions { Temperature = -1 }))).Message);
        Assert.Contains("role 'tool'", (await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync([new ChatMessage(ChatRole.Tool, "42")]))).Message);
        Assert.Contains("no message", (await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync([]))).Message);
        Assert.IsType<ChatClientMetadata>(client.GetService(typeof(ChatClientMetadata)));
    }

    [Fact]
    public async Task HostedChatClientAndEmbeddingGeneratorServeSavedModelsThroughMiddleware()
    {
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        string expected;
        using (var bundled = new BundledChat())
        {
            var generator = bundled.Generator;
            ml.Model.Save(generator, ml.Data.LoadFromEnumerable(new[] { new PromptRow() }).Schema, dir.File("chat.zip"));
            expected = generator.Generate(generator.Tokenizer.ChatTemplate.Apply([new TemplateMessage("system", "Answer briefly."), new TemplateMessage("user", "Who is Bob?")]), Saved).Text;
        }
        var texts = new[] { "a cat sat on the mat", "stock markets fell sharply" };
        float[][] vectors;
        var textData = ml.Data.LoadFromEnumerable(texts.Select(t => new TextRow { Text = t }));
        using (var embed = ml.Transforms.Text.EmbedText("Features", "Text").Fit(textData))
        {
            ml.Model.Save(embed, textData.Schema, dir.File("embed.zip"));
            vectors = embed.Transform(textData).GetColumn<float[]>("Features").ToArray();
        }

        var logs = new ConcurrentQueue<string>();
        using var host = ModelRegistryTests.BuildHost(dir.Path, new()
        {
            ["MLNetPeft:Models:chat:Path"] = "chat.zip",
            ["MLNetPeft:Models:embed:Path"] = "embed.zip",
            ["MLNetPeft:Models:notChat:Path"] = "embed.zip",
        }, services =>
        {
            services.AddLogging(b => b.SetMinimumLevel(LogLevel.Trace).AddProvider(new ListLoggerProvider(logs)));
            services.AddMLNetPeftChatClient("chat").UseLogging();
            services.AddMLNetPeftChatClient("notChat", serviceKey: "wrong");
            services.AddMLNetPeftEmbeddingGenerator("embed");
        });
        await host.StartAsync();

        var chat = host.Services.GetRequiredService<IChatClient>();
        Assert.IsNotType<TextGenerationChatClient>(chat); // wrapped by the logging middleware
        Assert.Equal(expected, (await chat.GetResponseAsync(Question("Who is Bob?"))).Text);
        Assert.Equal(expected, await Streamed(chat, Question("Who is Bob?"), null));
        Assert.Contains(logs, l => l.Contains("GetResponseAsync", StringComparison.Ordinal));
        Assert.Contains(logs, l => l.Contains("GetStreamingResponseAsync", StringComparison.Ordinal));

        var wrong = host.Services.GetRequiredKeyedService<IChatClient>("wrong");
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => wrong.GetResponseAsync(Question("Who is Bob?")));
        Assert.Contains("Model 'notChat'", e.Message);
        Assert.Contains("TextGenerationTransformer", e.Message);

        var embeddings = host.Services.GetRequiredService<IEmbeddingGenerator<string, Embedding<float>>>();
        var generated = await embeddings.GenerateAsync(texts);
        for (int i = 0; i < texts.Length; i++)
        {
            Assert.Equal(vectors[i].Length, generated[i].Vector.Length);
            for (int j = 0; j < vectors[i].Length; j++) Assert.Equal(vectors[i][j], generated[i].Vector.Span[j], 5);
        }
        Assert.Equal(384, embeddings.GetService<EmbeddingGeneratorMetadata>()!.DefaultModelDimensions);
        await host.StopAsync();
    }
}
