// An ML.NET app that adds one fine-tuning stage from the MLNetPeft packages:
//   dotnet run             LoRA fine-tuning of the bundled base model inside an ML.NET pipeline, saved and loaded
//   dotnet run classify    the text classifier of Classify.cs
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Tasks;
using MLNetPeft.Display;
using MLNetPeft.Generation;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.Training;
using MLNetPeft.Tuners.Lora;

if (args is ["classify", ..])
{
    return Classify.Run();
}

var ml = new MLContext(seed: 1);
var world = BaseModelRecipe.World();
var train = ml.Data.LoadFromEnumerable(InstructionTasks.Generate(InstructionTasks.TrainingSet(world), 1, 1).Take(64)
    .Select(e => new Row { Prompt = e.Prompt, Response = e.Completion }));
// The live progress display (plain lines when the output is redirected, as in CI) and the loss curve as a PNG.
var display = new TrainingDisplay(totalSteps: 30) { LineInterval = 10 };
using var baseModel = BundledBaseModel.Load();
var pipeline = ml.Transforms.Text.FineTuneCausalLm(baseModel, BundledBaseModel.LoadTokenizer(), new CausalLmFineTuningOptions
{
    Lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] },
    Training = new TrainingOptions { MaxSteps = 30, BatchSize = 8, LearningRate = 5e-3, WarmupSteps = 3, WeightDecay = 0, Seed = 1 },
    MaxLength = 64, Generation = new GenerationOptions { MaxNewTokens = 8, StopStrings = ["\n"] },
    Progress = display,
});
using var tuned = display.Run(() => pipeline.Fit(train));
string plot = Path.Combine(Path.GetTempPath(), $"package-consumer-{Guid.NewGuid():N}.png");
bool plotted = display.SavePlot(plot, "LoRA fine-tuning from the packages") && File.ReadAllBytes(plot).AsSpan(0, 4).SequenceEqual(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' });
File.Delete(plot);
string path = Path.Combine(Path.GetTempPath(), $"package-consumer-{Guid.NewGuid():N}.zip");
ml.Model.Save(tuned, train.Schema, path);
var loaded = ml.Model.Load(path, out _);
File.Delete(path);
var question = ml.Data.LoadFromEnumerable(new[] { new Row { Prompt = InstructionTasks.FormatPrompt("Where does Alice live?") } });
string answer = loaded.Transform(question).GetColumn<string>("GeneratedText").Single();
(loaded as IDisposable)?.Dispose();
var losses = display.Losses.Select(l => l.Loss).ToList();
double first = losses.Take(5).Average(), last = losses.TakeLast(5).Average();
Console.WriteLine($"LoRA fine-tuning from the packages: loss {first:F3} -> {last:F3} over {losses.Count} steps; saved, loaded, answered '{answer.Trim()}'; " +
    $"loss curve {(plotted ? "drawn" : "NOT drawn")}.");
return last < first && plotted ? 0 : 1;

sealed class Row
{
    public string Prompt { get; set; } = "";
    public string Response { get; set; } = "";
}
