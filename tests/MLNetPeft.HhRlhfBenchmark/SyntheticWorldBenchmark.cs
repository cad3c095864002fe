using System.Diagnostics;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Tasks;
using MLNetPeft.Generation;
using MLNetPeft.ML.Dpo;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Preferences;
using MLNetPeft.ML.RewardModeling;
using MLNetPeft.Training;
using MLNetPeft.Training.RewardModeling;
using MLNetPeft.Tuners.Lora;

/// <summary>
/// Preference learning where the truth is known: pairs from the bundled base model's world (chosen: the right fact;
/// rejected: another person's fact or the right fact in rambling). Persons 0–249 train, 250–299 validate (settings are
/// chosen there), 300–399 are held out. A reward model on the bundled LM; DPO (with and without RPO's SFT term) against
/// SFT on the chosen responses at the same step budget, by the rate at which greedy answers equal the chosen one.
/// </summary>
internal static class SyntheticWorldBenchmark
{
    private static readonly GenerationOptions Answer = new() { MaxNewTokens = 6, StopStrings = ["\n"] };

    public static void Run(int perPerson)
    {
        var ml = new MLContext(seed: 1);
        var world = BaseModelRecipe.World();
        var training = InstructionTasks.TrainingSet(world);
        PreferenceRow[] Rows(IEnumerable<PreferenceExample> examples) => examples.Select(e => new PreferenceRow { Prompt = e.Prompt, Chosen = e.Chosen, Rejected = e.Rejected }).ToArray();
        var train = Rows(InstructionTasks.GeneratePreferences(training.Take(250).ToList(), perPerson, 1));
        var validation = Rows(InstructionTasks.GeneratePreferences(training.Skip(250).ToList(), 1, 3));
        var heldOut = Rows(InstructionTasks.GeneratePreferences(InstructionTasks.HeldOutSet(world), 1, 2));
        Console.WriteLine($"Synthetic world: {train.Length} training pairs (persons 0–249, {perPerson} per person), {validation.Length} validation (250–299), {heldOut.Length} held-out (300–399).");
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();

        // Reward model: the step budget and learning rate are chosen on the validation persons.
        Console.WriteLine("| reward model (batch 8) | validation accuracy | held-out accuracy | wrong-fact pairs | rambling pairs | train time |");
        Console.WriteLine("|---|---|---|---|---|---|");
        (double Validation, string Line) best = (-1, "");
        foreach (var (method, steps, lr) in new[] { (FineTuningMethod.Lora, 150, 1e-3), (FineTuningMethod.Lora, 150, 3e-3), (FineTuningMethod.Lora, 400, 1e-3),
                     (FineTuningMethod.Lora, 400, 3e-3), (FineTuningMethod.Full, 400, 1e-4), (FineTuningMethod.Full, 400, 3e-4) })
        {
            var options = new RewardModelOptions
            {
                Method = method, MaxLength = 64, Seed = 1, Lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] },
                Training = new TrainingOptions { MaxSteps = steps, BatchSize = 8, LearningRate = lr, WarmupSteps = 10, WeightDecay = 0, Seed = 1 },
            };
            var clock = Stopwatch.StartNew();
            using var reward = ml.Transforms.Text.TrainRewardModel(model, tokenizer, options).Fit(ml.Data.LoadFromEnumerable(train));
            double seconds = clock.Elapsed.TotalSeconds;
            double Accuracy(PreferenceRow[] rows, Func<PreferenceRow, bool>? where = null)
            {
                var chosen = reward.Score(rows.Select(r => r.Prompt).ToList(), rows.Select(r => r.Chosen).ToList());
                var rejected = reward.Score(rows.Select(r => r.Prompt).ToList(), rows.Select(r => r.Rejected).ToList());
                var kept = Enumerable.Range(0, rows.Length).Where(i => where?.Invoke(rows[i]) ?? true).ToList();
                return RewardMetrics.Of(kept.Select(i => chosen[i]).ToList(), kept.Select(i => rejected[i]).ToList()).Accuracy;
            }
            static bool Rambling(PreferenceRow r) => r.Rejected.Contains(r.Chosen.Trim(), StringComparison.Ordinal);
            double val = Accuracy(validation);
            var line = $"| {(method == FineTuningMethod.Full ? "full" : "LoRA r 8 all-linear")}, {steps} steps, lr {lr} | {val:P1} | {Accuracy(heldOut):P1} | {Accuracy(heldOut, r => !Rambling(r)):P1} | {Accuracy(heldOut, Rambling):P1} | {TimeSpan.FromSeconds(seconds):mm\\:ss} |";
            Console.WriteLine(line);
            if (val > best.Validation) best = (val, line);
        }
        Console.WriteLine($"chosen on validation: {best.Line}");
        Console.WriteLine();

        // DPO against SFT on the chosen responses, the same LoRA, steps and learning rate.
        var heldOutView = ml.Data.LoadFromEnumerable(heldOut);
        double Matches(ITransformer generator) =>
            generator.Transform(heldOutView).GetColumn<string>("GeneratedText").Zip(heldOut).Count(x => x.First.Trim() == x.Second.Chosen.Trim()) / (double)heldOut.Length;
        using (var untouched = ml.Transforms.Text.GenerateText(model, tokenizer, options: Answer).Fit(heldOutView))
            Console.WriteLine($"| held-out greedy answer = chosen, base model | {Matches(untouched):P1} |");
        Console.WriteLine("|---|---|");
        const int budget = 60;
        var lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] };
        TrainingOptions Loop() => new() { MaxSteps = budget, BatchSize = 8, LearningRate = 3e-3, WarmupSteps = 5, WeightDecay = 0, Seed = 1 };
        var trainView = ml.Data.LoadFromEnumerable(train);
        foreach (var rpo in new double?[] { null, 1.0 })
        {
            var options = new CausalLmDpoOptions { MaxLength = 64, Seed = 1, Lora = lora, Generation = Answer, Training = Loop() };
            options.Dpo.RpoAlpha = rpo;
            var clock = Stopwatch.StartNew();
            using var tuned = ml.Transforms.Text.TrainDpo(model, tokenizer, options).Fit(trainView);
            Console.WriteLine($"| DPO sigmoid β 0.1{(rpo is { } a ? $" + RPO α {a}" : "")}, {budget} steps ({clock.Elapsed:mm\\:ss}) | {Matches(tuned):P1} |");
        }
        {
            var sft = ml.Data.LoadFromEnumerable(train.Select(r => new SftRow { Prompt = r.Prompt, Response = r.Chosen }));
            var options = new CausalLmFineTuningOptions { MaxLength = 64, Seed = 1, Lora = lora, Generation = Answer, Training = Loop() };
            var clock = Stopwatch.StartNew();
            using var tuned = ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, options).Fit(sft);
            Console.WriteLine($"| SFT on the chosen responses, {budget} steps ({clock.Elapsed:mm\\:ss}) | {Matches(tuned):P1} |");
        }
    }

    private sealed class SftRow
    {
        public string Prompt { get; set; } = "";
        public string Response { get; set; } = "";
    }
}
