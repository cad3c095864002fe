using System.Diagnostics;
using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.Architectures;
using MLNetPeft.BaseModel;
using MLNetPeft.MiniLM;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Preferences;
using MLNetPeft.ML.RewardModeling;
using MLNetPeft.Training;
using MLNetPeft.Training.RewardModeling;
using MLNetPeft.Tuners.Lora;

// Anthropic HH-RLHF helpful-base (test split, 2,352 pairs): a fixed-seed 85 % / 15 % split; reward models trained on the
// 85 % through the ML.NET estimator, and in the same run two baselines: "the longer response wins" and ML.NET's
// FeaturizeText + LbfgsLogisticRegression on the difference of the two responses' features (each pair in both orders).
// Accuracy on the held-out 15 % with a 95 % confidence interval, and on its pairs whose chosen response is the shorter.
//
//   dotnet run -c Release --project tests/MLNetPeft.HhRlhfBenchmark -- ../shared/data/hh_rlhf_helpful
//       [--models minilm-lora,minilm-full,base-lora] [--steps 250] [--batch 8] [--max-length 256] [--curve 250,500,1000]
//       [--lr X] [--no-baseline]
//   dotnet run -c Release --project tests/MLNetPeft.HhRlhfBenchmark -- --synthetic-world [--per-person 4] [--reward-from-sft]
//       [--reward-grid lora:400:1e-3,full:400:1e-4,layernorm:400:1e-2,ia3:400:1e-2] [--reward-only]   (SyntheticWorldBenchmark.cs)

if (args.Contains("--synthetic-world"))
{
    string? grid = args.SkipWhile(a => a != "--reward-grid").Skip(1).FirstOrDefault();
    SyntheticWorldBenchmark.Run(int.Parse(args.SkipWhile(a => a != "--per-person").Skip(1).DefaultIfEmpty("4").First()), args.Contains("--reward-from-sft"),
        grid is null ? null : SyntheticWorldBenchmark.ParseGrid(grid), args.Contains("--reward-only"));
    return 0;
}
if (args.Length == 0 || args[0].StartsWith("--", StringComparison.Ordinal))
{
    Console.Error.WriteLine("usage: HhRlhfBenchmark <hh_rlhf_helpful folder> [--models minilm-lora,minilm-full,base-lora] [--steps N] [--batch B] [--max-length L] [--curve n1,n2,…] [--lr X] [--no-baseline]");
    return 2;
}
var path = Path.Combine(args[0], "helpful-base_test.prompt_chosen_rejected.jsonl");
if (!File.Exists(path)) { Console.Error.WriteLine($"'{path}' is missing."); return 2; }
string Arg(string name, string fallback) => args.SkipWhile(a => a != name).Skip(1).DefaultIfEmpty(fallback).First();
int steps = int.Parse(Arg("--steps", "250")), batch = int.Parse(Arg("--batch", "8")), maxLength = int.Parse(Arg("--max-length", "256"));
double? learningRate = args.Contains("--lr") ? double.Parse(Arg("--lr", ""), System.Globalization.CultureInfo.InvariantCulture) : null;
var models = Arg("--models", "minilm-lora,minilm-full,base-lora").Split(',', StringSplitOptions.RemoveEmptyEntries);
var curve = args.Contains("--curve") ? Arg("--curve", "").Split(',').Select(int.Parse).ToArray() : [];

var rows = File.ReadLines(path).Select(line => JsonSerializer.Deserialize<PreferenceRow>(line, new JsonSerializerOptions { PropertyNameCaseInsensitive = true })!).ToList();
var random = new Random(2026);
var shuffled = rows.Select(r => (r, key: random.Next())).OrderBy(x => x.key).Select(x => x.r).ToList();
int trainCount = (int)Math.Round(shuffled.Count * 0.85);
var train = shuffled.Take(trainCount).ToList();
var test = shuffled.Skip(trainCount).ToList();
var shorter = test.Select((r, i) => (r, i)).Where(x => x.r.Chosen.Length < x.r.Rejected.Length).Select(x => x.i).ToHashSet();
Console.WriteLine($"HH-RLHF helpful-base: {rows.Count} pairs, {train.Count} training / {test.Count} held-out (seed 2026); {shorter.Count} held-out pairs " +
    $"have the shorter chosen response; threads {TorchSharp.torch.get_num_threads()}; {string.Join(' ', args.Skip(1))}");
var ml = new MLContext(seed: 1);
var table = new List<string>();
string Report(string name, string parameters, double seconds, IReadOnlyList<double> correct, double? margin = null)
{
    // Wald interval of a proportion; n = 353 makes it about ± 5 points.
    double p = correct.Average(), half = 1.96 * Math.Sqrt(p * (1 - p) / correct.Count);
    double shorterAccuracy = shorter.Average(i => correct[i]);
    var line = $"| {name} | {parameters} | {TimeSpan.FromSeconds(seconds):mm\\:ss} | {p:P1} ± {half:P1} | {shorterAccuracy:P1} | {(margin is { } m ? m.ToString("F3") : "n/a")} |";
    table.Add(line);
    Console.WriteLine(line);
    return line;
}

if (!args.Contains("--no-baseline"))
{
    // Ties (equal lengths) count as half right: the baseline has no way to choose.
    Report("the longer response wins", "0", 0, test.Select(r => r.Chosen.Length > r.Rejected.Length ? 1.0 : r.Chosen.Length == r.Rejected.Length ? 0.5 : 0).ToList());
    var clock = Stopwatch.StartNew();
    var featurizer = ml.Transforms.Text.FeaturizeText("Features", "Text").Fit(ml.Data.LoadFromEnumerable(train.SelectMany(r => new[] { new TextRow(r.Chosen), new TextRow(r.Rejected) })));
    List<VBuffer<float>> Features(IEnumerable<string> texts) =>
        featurizer.Transform(ml.Data.LoadFromEnumerable(texts.Select(t => new TextRow(t)))).GetColumn<VBuffer<float>>("Features").ToList();
    int dimension = featurizer.GetOutputSchema(ml.Data.LoadFromEnumerable(new[] { new TextRow("") }).Schema)["Features"].Type is VectorDataViewType { Size: var size } ? size : throw new InvalidOperationException("FeaturizeText gave no fixed-size vector.");
    List<DifferenceRow> Differences(IReadOnlyList<PreferenceRow> pairs, bool bothOrders)
    {
        var chosen = Features(pairs.Select(r => r.Chosen));
        var rejected = Features(pairs.Select(r => r.Rejected));
        var result = new List<DifferenceRow>();
        for (int i = 0; i < pairs.Count; i++)
        {
            result.Add(new DifferenceRow { Label = true, Features = Difference(chosen[i], rejected[i], dimension) });
            if (bothOrders) result.Add(new DifferenceRow { Label = false, Features = Difference(rejected[i], chosen[i], dimension) });
        }
        return result;
    }
    var schema = SchemaDefinition.Create(typeof(DifferenceRow));
    schema["Features"].ColumnType = new VectorDataViewType(NumberDataViewType.Single, dimension);
    var trainDifferences = ml.Data.LoadFromEnumerable(Differences(train, bothOrders: true), schema);
    var lbfgs = ml.BinaryClassification.Trainers.LbfgsLogisticRegression("Label", "Features").Fit(trainDifferences);
    double seconds = clock.Elapsed.TotalSeconds;
    var scores = lbfgs.Transform(ml.Data.LoadFromEnumerable(Differences(test, bothOrders: false), schema)).GetColumn<float>("Score").ToList();
    Report($"FeaturizeText + LbfgsLogisticRegression on f(chosen) − f(rejected) ({dimension:N0} features)", $"{dimension + 1:N0}", seconds,
        scores.Select(s => s > 0 ? 1.0 : s == 0 ? 0.5 : 0).ToList());
}

IDataView View(IEnumerable<PreferenceRow> pairs) => ml.Data.LoadFromEnumerable(pairs);
var testView = View(test);
foreach (var name in models)
{
    foreach (int size in curve.Length > 0 ? curve : [train.Count])
    {
        bool full = name.EndsWith("full", StringComparison.Ordinal);
        var options = new RewardModelOptions
        {
            Method = full ? FineTuningMethod.Full : FineTuningMethod.Lora, MaxLength = maxLength, Seed = 1,
            Lora = new LoraConfig { R = 16, LoraAlpha = 32, TargetModules = [LoraConfig.AllLinear] },
            Training = new TrainingOptions
            {
                MaxSteps = steps, BatchSize = batch, LearningRate = learningRate ?? (full ? 2e-5 : 2e-4), WarmupSteps = Math.Max(1, steps / 10),
                WeightDecay = 0, Seed = 1,
            },
        };
        int lastReported = 0;
        options.Progress = new SynchronousProgress<TrainingProgress>(p =>
        {
            if (p.Step - lastReported >= 25 || p.Step == p.TotalSteps) { lastReported = p.Step; Console.Write($"\r  {name} ({size} pairs): step {p.Step}/{p.TotalSteps} loss {p.Loss:F3} eta {p.Eta:mm\\:ss}   "); }
        });
        var clock = Stopwatch.StartNew();
        RewardModelTransformer reward;
        if (name.StartsWith("minilm", StringComparison.Ordinal))
        {
            using var encoder = AllMiniLmL6V2.Load();
            reward = ml.Transforms.Text.TrainRewardModel(encoder, AllMiniLmL6V2.LoadTokenizer(), options).Fit(View(train.Take(size)));
        }
        else
        {
            using var causal = BundledBaseModel.Load();
            reward = ml.Transforms.Text.TrainRewardModel(causal, BundledBaseModel.LoadTokenizer(), options).Fit(View(train.Take(size)));
        }
        double seconds = clock.Elapsed.TotalSeconds;
        Console.WriteLine();
        using (reward)
        {
            var scored = reward.Transform(testView);
            var chosen = scored.GetColumn<float>(reward.ChosenScoreColumnName).ToList();
            var rejected = scored.GetColumn<float>(reward.RejectedScoreColumnName).ToList();
            var metrics = RewardMetrics.Of(chosen, rejected);
            Report($"{name}, {size} pairs, {steps} steps × {batch}, max {maxLength} tokens, lr {options.Training.LearningRate}", $"{reward.TrainedParameters:N0}", seconds,
                chosen.Zip(rejected, (c, r) => c > r ? 1.0 : c == r ? 0.5 : 0).ToList(), metrics.MeanMargin);
        }
    }
}

Console.WriteLine();
Console.WriteLine($"| model ({train.Count} training / {test.Count} held-out pairs) | trained parameters | train time | held-out accuracy (95 % CI) | chosen-is-shorter pairs ({shorter.Count}) | mean margin |");
Console.WriteLine("|---|---|---|---|---|---|");
foreach (var line in table) Console.WriteLine(line);
return 0;

static VBuffer<float> Difference(VBuffer<float> a, VBuffer<float> b, int dimension)
{
    var values = new Dictionary<int, float>();
    foreach (var (i, v) in a.Items()) values[i] = v;
    foreach (var (i, v) in b.Items()) values[i] = values.GetValueOrDefault(i) - v;
    var indices = values.Keys.Order().ToArray();
    return new VBuffer<float>(dimension, indices.Length, indices.Select(i => values[i]).ToArray(), indices);
}

sealed record TextRow(string Text);

sealed class DifferenceRow
{
    public bool Label { get; set; }
    public VBuffer<float> Features { get; set; }
}
