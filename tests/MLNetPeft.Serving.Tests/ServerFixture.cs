using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.BaseModel;
using MLNetPeft.Generation;
using MLNetPeft.Hosting.Models;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Retrieval;

namespace MLNetPeft.Serving.Tests;

/// <summary>
/// The OpenAI-compatible server on a loopback port, serving the bundled model as "chat" and MiniLM as "embed", and the
/// answers the models give when called directly (what the server must return).
/// </summary>
public sealed class ServerFixture : IAsyncLifetime
{
    public sealed class PromptRow
    {
        public string Prompt { get; set; } = "";
    }

    public sealed class TextRow
    {
        public string Text { get; set; } = "";
    }

    public static readonly GenerationOptions Saved = new() { MaxNewTokens = 16, StopStrings = ["\n"] };

    private readonly TempFolder _folder = new();
    private WebApplication? _app;

    public Uri BaseAddress { get; private set; } = null!;
    public TextGenerationTransformer Generator { get; private set; } = null!;
    private MLNetPeft.Architectures.CausalLanguageModel _model = null!;
    public MLContext ML { get; } = new(seed: 1);
    public TextEmbeddingTransformerHolder Embedder { get; private set; } = null!;
    public ModelRegistry Registry => _app!.Services.GetRequiredService<ModelRegistry>();

    public async Task InitializeAsync()
    {
        _model = BundledBaseModel.Load();
        Generator = ML.Transforms.Text.GenerateText(_model, BundledBaseModel.LoadTokenizer(), options: Saved)
            .Fit(ML.Data.LoadFromEnumerable(new[] { new PromptRow { Prompt = "x" } }));
        ML.Model.Save(Generator, ML.Data.LoadFromEnumerable(new[] { new PromptRow() }).Schema, _folder.File("chat.zip"));
        var texts = ML.Data.LoadFromEnumerable(new[] { new TextRow { Text = "x" } });
        var embed = ML.Transforms.Text.EmbedText("Features", "Text").Fit(texts);
        ML.Model.Save(embed, texts.Schema, _folder.File("embed.zip"));
        Embedder = new TextEmbeddingTransformerHolder(embed);

        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = _folder.Path, EnvironmentName = "Development" });
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["MLNetPeft:Models:chat:Path"] = "chat.zip",
            ["MLNetPeft:Models:embed:Path"] = "embed.zip",
        });
        builder.Services.AddMLNetPeftModels(builder.Configuration);
        builder.Services.AddOpenAIEndpoints();
        _app = builder.Build();
        _app.MapOpenAIEndpoints();
        await _app.StartAsync();
        BaseAddress = new Uri(_app.Urls.Single());
    }

    /// <summary>What the bundled model answers after the conversation in its chat template, with the saved options.</summary>
    public string DirectChat(params (string Role, string Content)[] messages) =>
        Generator.Generate(Generator.Tokenizer.ChatTemplate.Apply(messages.Select(m => new MLNetPeft.Tokenization.ChatMessage(m.Role, m.Content)).ToList()), Saved).Text;

    public async Task DisposeAsync()
    {
        if (_app is not null)
        {
            await _app.StopAsync();
            await _app.DisposeAsync();
        }
        Generator.Dispose();
        _model.Dispose();
        Embedder.Dispose();
        _folder.Dispose();
    }
}

/// <summary>The embedding transformer fitted for the server, to compare its vectors with the server's.</summary>
public sealed class TextEmbeddingTransformerHolder(MLNetPeft.ML.Retrieval.TextEmbeddingTransformer transformer) : IDisposable
{
    public float[] Embed(string text) => transformer.Embedder.Embed([text])[0];
    public void Dispose() => transformer.Dispose();
}
