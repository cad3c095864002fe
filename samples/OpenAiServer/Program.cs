// An OpenAI-compatible server over saved ML.NET models (appsettings.json, section MLNetPeft:Models).
//   dotnet run --project samples/OpenAiServer -- save-bundled     writes models/chat.zip (the bundled base model) and models/embed.zip (MiniLM)
//   dotnet run --project samples/OpenAiServer                     serves them on http://127.0.0.1:5080/v1
// Then any OpenAI client works against it, e.g.
//   curl http://127.0.0.1:5080/v1/chat/completions -H 'Content-Type: application/json' -d '{"model":"chat","messages":[{"role":"user","content":"Who is Bob?"}]}'
using Microsoft.ML;
using MLNetPeft.BaseModel;
using MLNetPeft.Checkpoints;
using MLNetPeft.Generation;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Retrieval;
using MLNetPeft.Serving;

if (args is ["save-bundled", ..])
{
    SaveBundledModels(Path.Combine(AppContext.BaseDirectory, "models"));
    return;
}

// Settings and models are read beside the executable, wherever it is started from.
var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args, ContentRootPath = AppContext.BaseDirectory });
builder.Services.AddMLNetPeftModels(builder.Configuration);
builder.Services.AddOpenAIEndpoints();
var app = builder.Build();
app.MapOpenAIEndpoints();
app.Run();

static void SaveBundledModels(string folder)
{
    Directory.CreateDirectory(folder);
    var ml = new MLContext(seed: 1);
    var prompts = ml.Data.LoadFromEnumerable(new[] { new PromptRow() });
    using (var model = BundledBaseModel.Load())
    using (var chat = ml.Transforms.Text.GenerateText(model, BundledBaseModel.LoadTokenizer(), options: new GenerationOptions { MaxNewTokens = 32, StopStrings = ["\n"] }).Fit(prompts))
        AtomicFile.Write(Path.Combine(folder, "chat.zip"), stream => ml.Model.Save(chat, prompts.Schema, stream));
    var texts = ml.Data.LoadFromEnumerable(new[] { new TextRow() });
    using (var embed = ml.Transforms.Text.EmbedText("Embedding", "Text").Fit(texts))
        AtomicFile.Write(Path.Combine(folder, "embed.zip"), stream => ml.Model.Save(embed, texts.Schema, stream));
    Console.WriteLine($"Saved {folder}/chat.zip and {folder}/embed.zip.");
}

sealed class PromptRow { public string Prompt { get; set; } = ""; }
sealed class TextRow { public string Text { get; set; } = ""; }
