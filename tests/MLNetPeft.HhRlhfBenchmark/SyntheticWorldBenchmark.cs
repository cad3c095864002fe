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
using MLNetPeft.Architectures;
using MLNetPeft.Training.Dpo;

/// <summary>
/// Preference learning where the truth is known: pairs from the bundled base model's world (chosen: the right fact;
/// rejected: another person's fact or the right fact in rambling). Persons 0–249 train, 250–299 validate (settings are
/// chosen there), 300–399 are held out. A reward model on the bundled LM; DPO (with and without RPO's SFT term) against
/// SFT on the chosen responses at the same step budget, by the rate at which greedy answers equal the chosen one.
/// With <c>rewardFromSft</c> the reward model starts from the SFT model (InstructGPT's recipe) instead of the base model.
/// </summary>
internal static class SyntheticWorldBenchmark
{
    private static readonly GenerationOptions Answer = new() { MaxNewTokens = 6, StopStrings = ["\n"] };

    /// <summary>
    /// "method:steps:lr[:targets],…" (method as <see cref="FineTuningMethod"/>, case ignored; targets a LoRA target-module
    /// regular expression, all linear layers when left out) into the reward model grid.
    /// </summary>
    public static RewardRun[] ParseGrid(string text) =>
        text.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(item =>
        {
            var parts = item.Split(':');
            if (parts.Length is not (3 or 4) || !Enum.TryParse<FineTuningMethod>(parts[0], ignoreCase: true, out var method))
                throw new ArgumentException($"--reward-grid: '{item}' is not method:steps:lr[:targets] with a method of {string.Join(", ", Enum.GetNames<FineTuningMethod>())}.");
            return new RewardRun(method, int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture),
                double.Parse(parts[2], System.Globalization.CultureInfo.InvariantCulture), parts.Length == 4 ? parts[3] : null);
        }).ToArray();

    /// <summary>One reward model of the grid; <paramref name="Targets"/> a LoRA target-module regex, or null for all linear layers.</summary>
    public sealed record RewardRun(FineTuningMethod Method, int Steps, double LearningRate, string? Targets = null);

    public static void Run(int perPerson, bool rewardFromSft, RewardRun[]? rewardGrid = null, bool rewardOnly = false)
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
        var trainView = ml.Data.LoadFromEnumerable(train);
        const int budget = 60;
        var lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] };
        TrainingOptions Loop() => new() { MaxSteps = budget, BatchSize = 8, LearningRate = 3e-3, WarmupSteps = 5, WeightDecay = 0, Seed = 1 };
        TextGenerationTransformer Sft()
        {
            var sft = ml.Data.LoadFromEnumerable(train.Select(r => new SftRow { Prompt = r.Prompt, Response = r.Chosen }));
            var options = new CausalLmFineTuningOptions { MaxLength = 64, Seed = 1, Lora = lora, Generation = Answer, Training = Loop() };
            return ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, options).Fit(sft);
        }

        // Reward model: the step budget and learning rate are chosen on the validation persons.
        using var sftForReward = rewardFromSft ? Sft() : null;
        var backbone = sftForReward?.Model ?? model;   // the LoRA is merged into the SFT model's weights
        // Does the language model itself know? log p(chosen | prompt) against log p(rejected | prompt) on the wrong-fact pairs.
        var wrongFacts = heldOut.Where(r => !Rambling(r)).ToArray();
        var wrongPairs = PreferencePairs.FromExamples(wrongFacts.Select(r => ((IReadOnlyList<int>)tokenizer.Encode(r.Prompt),
            (IReadOnlyList<int>)tokenizer.Encode(r.Chosen, addSpecialTokens: false), (IReadOnlyList<int>)tokenizer.Encode(r.Rejected, addSpecialTokens: false), 0f)), 64);
        foreach (var (name, lm) in new[] { ("base", (CausalLanguageModel)model), ("SFT", sftForReward?.Model) })
        {
            if (lm is null) continue;
            lm.eval();
            using var _ = TorchSharp.torch.no_grad();
            var (c, r, nll) = DpoTrainer.ResponseLogProbs(lm, wrongPairs.Pairs);
            using (c) using (r) using (nll)
                Console.WriteLine($"{name} model: log p(chosen) > log p(rejected) on {c.data<float>().ToArray().Zip(r.data<float>().ToArray()).Count(x => x.First > x.Second)} of {wrongFacts.Length} held-out wrong-fact pairs");
        }
        Console.WriteLine($"| reward model from the {(rewardFromSft ? "SFT" : "base")} model (batch 8) | validation accuracy | held-out accuracy | wrong-fact pairs | rambling pairs | train time |");
        Console.WriteLine("|---|---|---|---|---|---|");
        (double Validation, string Line) best = (-1, "");
        var grid = rewardGrid ?? (rewardFromSft
            ? new RewardRun[] { new(FineTuningMethod.Lora, 400, 1e-3), new(FineTuningMethod.Lora, 1000, 3e-4), new(FineTuningMethod.Full, 400, 1e-4), new(FineTuningMethod.Full, 1500, 1e-4) }
            : [new(FineTuningMethod.Lora, 150, 1e-3), new(FineTuningMethod.Lora, 150, 3e-3), new(FineTuningMethod.Lora, 400, 1e-3),
                new(FineTuningMethod.Lora, 400, 3e-3), new(FineTuningMethod.Full, 400, 1e-4), new(FineTuningMethod.Full, 400, 3e-4)]);
        foreach (var (method, steps, lr, targets) in grid)
        {
            var options = new RewardModelOptions
            {
                Method = method, MaxLength = 64, Seed = 1, Lora = targets is null ? new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] } : new LoraConfig { R = 8, LoraAlpha = 16, TargetModulesRegex = targets },
                Training = new TrainingOptions { MaxSteps = steps, BatchSize = 8, LearningRate = lr, WarmupSteps = 10, WeightDecay = 0, Seed = 1 },
            };
            var clock = Stopwatch.StartNew();
            using var reward = ml.Transforms.Text.TrainRewardModel(backbone, tokenizer, options).Fit(trainView);
            double seconds = clock.Elapsed.TotalSeconds;
            var (val, line) = RewardRow($"{(method switch { FineTuningMethod.Full => "full", FineTuningMethod.Lora => $"LoRA r 8 {targets ?? "all-linear"}", _ => method.ToString() })}, {steps} steps, lr {lr}",
                reward, validation, heldOut, seconds);
            if (val > best.Validation) best = (val, line);
        }
        if (rewardOnly)
        {
            Console.WriteLine($"chosen on validation: {best.Line}");
            return;
        }

        // DPO against SFT on the chosen responses, the same LoRA, steps and learning rate.
        var heldOutView = ml.Data.LoadFromEnumerable(heldOut);
        double Matches(ITransformer generator) =>
            generator.Transform(heldOutView).GetColumn<string>("GeneratedText").Zip(heldOut).Count(x => x.First.Trim() == x.Second.Chosen.Trim()) / (double)heldOut.Length;
        using (var untouched = ml.Transforms.Text.GenerateText(model, tokenizer, options: Answer).Fit(heldOutView))
            Console.WriteLine($"| held-out greedy answer = chosen, base model | {Matches(untouched):P1} |");
        Console.WriteLine("|---|---|");
        var implicitRows = new List<string>();
        foreach (var rpo in new double?[] { null, 1.0 })
        {
            var options = new CausalLmDpoOptions { MaxLength = 64, Seed = 1, Lora = lora, Generation = Answer, Training = Loop() };
            options.Dpo.RpoAlpha = rpo;
            var clock = Stopwatch.StartNew();
            using var tuned = ml.Transforms.Text.TrainDpo(model, tokenizer, options).Fit(trainView);
            double seconds = clock.Elapsed.TotalSeconds;
            string name = $"DPO sigmoid β 0.1{(rpo is { } a ? $" + RPO α {a}" : "")}, {budget} steps";
            Console.WriteLine($"| {name} ({clock.Elapsed:mm\\:ss}) | {Matches(tuned):P1} |");
            // The DPO model as a reward model: its implicit reward β·(log π − log π_ref) against the base model.
            var (val, line) = RewardRow($"implicit reward of {name}", tuned.AsImplicitReward(model, tokenizer, options.Dpo.Beta, maxLength: 64),
                validation, heldOut, seconds, print: false);
            implicitRows.Add(line);
            if (val > best.Validation) best = (val, line);
        }
        {
            var clock = Stopwatch.StartNew();
            using var tuned = Sft();
            Console.WriteLine($"| SFT on the chosen responses, {budget} steps ({clock.Elapsed:mm\\:ss}) | {Matches(tuned):P1} |");
        }
        Console.WriteLine();
        Console.WriteLine("| DPO's implicit reward as a reward model | validation accuracy | held-out accuracy | wrong-fact pairs | rambling pairs | train time |");
        Console.WriteLine("|---|---|---|---|---|---|");
        foreach (var line in implicitRows) Console.WriteLine(line);
        Console.WriteLine($"chosen on validation (scalar-head reward models and implicit rewards): {best.Line}");
    }

    /// <summary>A table row of a reward's pairwise accuracy on validation, held-out, and the held-out pairs of each kind; and the validation accuracy.</summary>
    private static (double Validation, string Line) RewardRow(string name, IRewardFunction reward, PreferenceRow[] validation, PreferenceRow[] heldOut, double seconds, bool print = true)
    {
        // Each pair scored once; the held-out subsets are read from the same scores.
        Func<Func<PreferenceRow, bool>?, double> Scored(PreferenceRow[] rows)
        {
            var prompts = rows.Select(r => r.Prompt).ToList();
            var chosen = reward.Score(prompts, rows.Select(r => r.Chosen).ToList());
            var rejected = reward.Score(prompts, rows.Select(r => r.Rejected).ToList());
            return where =>
            {
                var kept = Enumerable.Range(0, rows.Length).Where(i => where?.Invoke(rows[i]) ?? true).ToList();
                return RewardMetrics.Of(kept.Select(i => chosen[i]).ToList(), kept.Select(i => rejected[i]).ToList()).Accuracy;
            };
        }
        double val = Scored(validation)(null);
        var heldOutAccuracy = Scored(heldOut);
        var line = $"| {name} | {val:P1} | {heldOutAccuracy(null):P1} | {heldOutAccuracy(r => !Rambling(r)):P1} | {heldOutAccuracy(Rambling):P1} | {TimeSpan.FromSeconds(seconds):mm\\:ss} |";
        if (print) Console.WriteLine(line);
        return (val, line);
    }

    private static bool Rambling(PreferenceRow r) => r.Rejected.Contains(r.Chosen.Trim(), StringComparison.Ordinal);

    private sealed class SftRow
    {
        public string Prompt { get; set; } = "";
        public string Response { get; set; } = "";
    }
}
