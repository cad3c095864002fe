// An ML.NET app that adds one fine-tuning stage from the MLNetPeft packages:
//   dotnet run             LoRA fine-tuning of the bundled base model inside an ML.NET pipeline, saved and loaded
//   dotnet run classify    the text classifier of Classify.cs
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Tasks;
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
var losses = new List<double>();
using var baseModel = BundledBaseModel.Load();
var pipeline = ml.Transforms.Text.FineTuneCausalLm(baseModel, BundledBaseModel.LoadTokenizer(), new CausalLmFineTuningOptions
{
    Lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] },
    Training = new TrainingOptions { MaxSteps = 30, BatchSize = 8, LearningRate = 5e-3, WarmupSteps = 3, WeightDecay = 0, Seed = 1 },
    MaxLength = 64, Generation = new GenerationOptions { MaxNewTokens = 8, StopStrings = ["\n"] },
    Progress = new SynchronousProgress<TrainingProgress>(p => losses.Add(p.Loss)),
});
using var tuned = pipeline.Fit(train);
string path = Path.Combine(Path.GetTempPath(), $"package-consumer-{Guid.NewGuid():N}.zip");
ml.Model.Save(tuned, train.Schema, path);
var loaded = ml.Model.Load(path, out _);
File.Delete(path);
var question = ml.Data.LoadFromEnumerable(new[] { new Row { Prompt = InstructionTasks.FormatPrompt("Where does Alice live?") } });
string answer = loaded.Transform(question).GetColumn<string>("GeneratedText").Single();
(loaded as IDisposable)?.Dispose();
double first = losses.Take(5).Average(), last = losses.TakeLast(5).Average();
Console.WriteLine($"LoRA fine-tuning from the packages: loss {first:F3} -> {last:F3} over {losses.Count} steps; saved, loaded, answered '{answer.Trim()}'.");
return last < first ? 0 : 1;

sealed class Row
{
    public string Prompt { get; set; } = "";
    public string Response { get; set; } = "";
}
