using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Corpus;
using MLNetPeft.BaseModel.Tokenizer;
using MLNetPeft.Checkpoints;
using MLNetPeft.Tokenization;
using MLNetPeft.Training;
using MLNetPeft.Training.LanguageModeling;

// Pretrains the bundled base model from the generated corpus and writes it, with its tokenizer, in HF folder layout.
//
//   dotnet run -c Release --project eng/Pretrain [-- --steps 1400 --output src/MLNetPeft.BaseModel/Checkpoint --work obj/pretrain --resume]
//
// The run checkpoints into --work; it starts from scratch unless --resume is given, in which case an interrupted run
// continues from its newest checkpoint (and ends with the same weights as an uninterrupted one).

string Arg(string name, string fallback) => args.SkipWhile(a => a != name).Skip(1).DefaultIfEmpty(fallback).First();
var root = FindRepositoryRoot();
int steps = int.Parse(Arg("--steps", "1400"));
string output = Path.GetFullPath(Arg("--output", Path.Combine(root, "src/MLNetPeft.BaseModel/Checkpoint")));
string work = Path.GetFullPath(Arg("--work", Path.Combine(root, "obj/pretrain")));
bool resume = args.Contains("--resume");
if (!resume && Directory.Exists(work)) Directory.Delete(work, recursive: true);
var clock = Stopwatch.StartNew();

var world = BaseModelRecipe.World();
var trainDocs = CorpusGenerator.Documents(world, BaseModelRecipe.TrainingDocuments, BaseModelRecipe.TrainingDocumentsSeed).ToList();
var validationDocs = CorpusGenerator.Documents(world, BaseModelRecipe.ValidationDocuments, BaseModelRecipe.ValidationDocumentsSeed).ToList();
Console.WriteLine($"corpus: {trainDocs.Count:N0} training documents ({trainDocs.Sum(d => d.Length):N0} characters), {validationDocs.Count:N0} validation documents");

var tokenizerFolder = Path.Combine(work, "tokenizer");
var (vocabulary, merges) = ByteLevelBpeTrainer.Train(trainDocs.Take(BaseModelRecipe.VocabularyDocuments), BaseModelRecipe.VocabSize);
ByteLevelBpeTrainer.Save(tokenizerFolder, vocabulary, merges);
var tokenizer = TextTokenizer.FromPretrained(tokenizerFolder);
int eos = tokenizer.EosId!.Value;
Console.WriteLine($"tokenizer: byte-level BPE, {vocabulary.Count} tokens, {merges.Count} merges ({clock.Elapsed.TotalSeconds:F0} s)");

var train = TokenBlocks.Pack(trainDocs.Select(d => tokenizer.Encode(d, addSpecialTokens: false)), BaseModelRecipe.BlockSize, eos);
var validation = TokenBlocks.Pack(validationDocs.Select(d => tokenizer.Encode(d, addSpecialTokens: false)), BaseModelRecipe.BlockSize, eos);
var options = BaseModelRecipe.TrainingOptions(steps);
options.CheckpointFolder = Path.Combine(work, "checkpoints");
long trainedTokens = (long)steps * options.BatchSize * BaseModelRecipe.BlockSize;
Console.WriteLine($"tokens: {train.TargetTokens:N0} training, {validation.TargetTokens:N0} validation; {steps} steps × {options.BatchSize} × {BaseModelRecipe.BlockSize} = {trainedTokens:N0} tokens trained ({(double)trainedTokens / train.TargetTokens:F2} epochs)");

var config = BaseModelRecipe.ModelConfig(vocabulary.Count);
using var model = new LlamaForCausalLM(config);
model.InitializeWeights(BaseModelRecipe.WorldSeed);
Console.WriteLine($"model: Llama, {model.ParameterCount():N0} parameters");

var progress = new ConsoleProgress();
var result = new LanguageModelTrainer(model, options).Train(train, validation, progress);
Console.WriteLine();

double validationLoss = LanguageModelTrainer.Evaluate(model, validation, options.BatchSize);
var wall = clock.Elapsed;
Console.WriteLine($"validation loss {validationLoss:F4}, perplexity {Math.Exp(validationLoss):F3} (all {validation.Count} validation blocks)");
Console.WriteLine($"wall time {wall.TotalMinutes:F1} min");

Directory.CreateDirectory(output);
foreach (var file in Directory.GetFiles(tokenizerFolder)) AtomicFile.Copy(file, Path.Combine(output, Path.GetFileName(file)));
model.SavePretrained(output);
AtomicFile.WriteAllText(Path.Combine(output, "training_summary.json"), new JsonObject
{
    ["command"] = $"dotnet run -c Release --project eng/Pretrain -- --steps {steps}",
    ["parameters"] = model.ParameterCount(),
    ["vocab_size"] = vocabulary.Count,
    ["training_tokens_in_corpus"] = train.TargetTokens,
    ["validation_tokens"] = validation.TargetTokens,
    ["steps"] = steps,
    ["tokens_trained"] = trainedTokens,
    ["final_training_loss"] = Math.Round(result.FinalLoss, 4),
    ["validation_loss"] = Math.Round(validationLoss, 4),
    ["validation_perplexity"] = Math.Round(Math.Exp(validationLoss), 3),
    ["wall_time_minutes"] = Math.Round(wall.TotalMinutes, 1),
}.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
Console.WriteLine($"wrote {output}");

static string FindRepositoryRoot()
{
    for (var dir = new DirectoryInfo(Environment.CurrentDirectory); dir is not null; dir = dir.Parent)
        if (File.Exists(Path.Combine(dir.FullName, "MLNetPeft.sln"))) return dir.FullName;
    throw new InvalidOperationException("Run this from inside the MLNetPeft repository.");
}

/// <summary>One live console line: step, loss, learning rate, throughput, elapsed and remaining time.</summary>
sealed class ConsoleProgress : IProgress<TrainingProgress>
{
    public void Report(TrainingProgress p)
    {
        var line = $"step {p.Step}/{p.TotalSteps}  loss {p.Loss:F4}  lr {p.LearningRate:E2}  {p.TokensPerSecond:F0} tok/s  " +
            $"elapsed {p.Elapsed:mm\\:ss}  eta {p.Eta:mm\\:ss}" + (p.ValidationLoss is { } v ? $"  val {v:F4}" : "");
        if (Console.IsOutputRedirected) { if (p.Step % 50 == 0 || p.Step == p.TotalSteps) Console.WriteLine(line); }
        else Console.Write("\r" + line.PadRight(Console.WindowWidth > 0 ? Console.WindowWidth - 1 : 100));
    }
}
