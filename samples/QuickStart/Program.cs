using System.Diagnostics;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Tasks;
using MLNetPeft.Display;
using MLNetPeft.Generation;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Generation;
using MLNetPeft.Training;
using MLNetPeft.Tuners.Lora;

// QuickStart: LoRA instruction tuning of the bundled base model inside an ML.NET pipeline.
//   dotnet run --project samples/QuickStart

var clock = Stopwatch.StartNew();
var ml = new MLContext(seed: 1);
var world = BaseModelRecipe.World();
var trainExamples = InstructionTasks.Generate(InstructionTasks.TrainingSet(world), perPerson: 2, seed: 1);
var heldOut = InstructionTasks.Generate(InstructionTasks.HeldOutSet(world), perPerson: 1, seed: 2);
var train = ml.Data.LoadFromEnumerable(trainExamples.Select(e => new Row(e.Prompt, e.Completion)));
var test = ml.Data.LoadFromEnumerable(heldOut.Select(e => new Row(e.Prompt, e.Completion)));
Console.WriteLine($"{trainExamples.Count} training instructions about {InstructionTasks.TrainingPeople} people; {heldOut.Count} held-out instructions about other people");

using var model = BundledBaseModel.Load();
var tokenizer = BundledBaseModel.LoadTokenizer();
var answer = new GenerationOptions { MaxNewTokens = 6, StopStrings = ["\n"] };
var before = ml.Transforms.CopyColumns("Prompt", "Question").Append(ml.Transforms.Text.GenerateText(model, tokenizer, options: answer)).Fit(train);
var beforeAnswers = before.Transform(test).GetColumn<string>("GeneratedText").ToList();
double emBefore = ExactMatch(beforeAnswers);
Console.WriteLine($"base model: exact match {emBefore:P0} on held-out instructions ({clock.Elapsed.TotalSeconds:F0} s)");

var options = new CausalLmFineTuningOptions
{
    Lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] },
    Training = new TrainingOptions { MaxSteps = 200, BatchSize = 16, LearningRate = 5e-3, WarmupSteps = 10, WeightDecay = 0, Seed = 1 },
    MaxLength = 64, Generation = answer, Seed = 1,
};
// A live progress bar (step, loss, tokens/s, ETA) while it trains, plain lines when the output is redirected.
var display = new TrainingDisplay(options.Training.MaxSteps) { LineInterval = 50 };
options.Progress = display;
var pipeline = ml.Transforms.CopyColumns("Prompt", "Question")                      // a built-in ML.NET transform
    .Append(ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, options));
var tuned = display.Run(() => pipeline.Fit(train));
var plot = Path.Combine(Path.GetTempPath(), "mlnetpeft-quickstart-loss.png");
display.SavePlot(plot, "QuickStart: LoRA SFT of the bundled model");
Console.WriteLine($"loss {display.Losses[0].Loss:F3} -> {display.Losses[^1].Loss:F3}; the curve is in {plot}");

var path = Path.Combine(Path.GetTempPath(), "mlnetpeft-quickstart.zip");
ml.Model.Save(tuned, train.Schema, path);
var fresh = new MLContext(seed: 2);
var reloaded = fresh.Model.Load(path, out _);
var afterAnswers = reloaded.Transform(fresh.Data.LoadFromEnumerable(heldOut.Select(e => new Row(e.Prompt, e.Completion)))).GetColumn<string>("GeneratedText").ToList();
double emAfter = ExactMatch(afterAnswers);
Console.WriteLine($"saved to {path} ({new FileInfo(path).Length / 1e6:F1} MB), reloaded in a fresh MLContext");
Console.WriteLine();
Console.WriteLine("| instruction | expected | before | after |");
Console.WriteLine("|---|---|---|---|");
foreach (int i in new[] { 0, 1, 2, 3, 4 })
    Console.WriteLine($"| {heldOut[i].Instruction} | {heldOut[i].Response} | {beforeAnswers[i].Trim()} | {afterAnswers[i].Trim()} |");
Console.WriteLine();
Console.WriteLine($"exact match on {heldOut.Count} held-out instructions: {emBefore:P0} before, {emAfter:P0} after LoRA fine-tuning; total {clock.Elapsed.TotalSeconds:F0} s");
return 0;

double ExactMatch(IReadOnlyList<string> answers) => answers.Zip(heldOut).Count(x => x.First.Trim() == x.Second.Response) / (double)heldOut.Count;

sealed record Row(string Question, string Response);
