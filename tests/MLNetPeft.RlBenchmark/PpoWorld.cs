using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Tasks;
using MLNetPeft.Generation;
using MLNetPeft.ML.Dpo;
using MLNetPeft.ML.Evaluation;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Reinforcement;
using MLNetPeft.ML.RewardModeling;
using MLNetPeft.Training;
using MLNetPeft.Training.Dpo;
using MLNetPeft.Training.Ppo;
using MLNetPeft.Training.RewardModeling;
using MLNetPeft.Training.Reinforcement;
using MLNetPeft.Tuners.Lora;

/// <summary>
/// PPO against a learned reward, through the ML.NET estimators as a user would call them: a reward model on the bundled
/// model trained on synthetic-world preference pairs of persons 0–249 (chosen: the right fact, directly; rejected: a
/// wrong fact or the right one in rambling), then PPO on instructions about the same persons with that reward model
/// (the critic a copy of it). Measured on held-out persons 300–399: the reward model's mean score of the greedy
/// answers, the rate at which they equal the true answer (what the reward approximates), and the sampled KL.
/// </summary>
internal static class PpoWorld
{
    public sealed class PairRow { public string Prompt { get; set; } = ""; public string Chosen { get; set; } = ""; public string Rejected { get; set; } = ""; }
    public sealed class PromptRow { public string Prompt { get; set; } = ""; }
    public sealed class SftRow { public string Prompt { get; set; } = ""; public string Response { get; set; } = ""; }

    /// <param name="implicitReward">
    /// The reward is DPO's implicit reward β·log(π_DPO/π_base) of a DPO + RPO model tuned on the same pairs (60 LoRA steps,
    /// β 0.1) instead of a scalar-head reward model; the critic then starts from the policy.
    /// </param>
    public static void Run(int steps, double lr, int batch, double klCoef, bool fromSft, bool implicitReward = false, int sftSteps = 60)
    {
        var ml = new MLContext(seed: 1);
        var world = BaseModelRecipe.World();
        var people = InstructionTasks.TrainingSet(world);
        var pairs = InstructionTasks.GeneratePreferences(people.Take(250).ToList(), 4, 1).Select(p => new PairRow { Prompt = p.Prompt, Chosen = p.Chosen, Rejected = p.Rejected }).ToArray();
        var prompts = InstructionTasks.Generate(people.Take(250).ToList(), 2, 7).Select(e => new PromptRow { Prompt = e.Prompt }).ToArray();
        var heldOut = InstructionTasks.Generate(InstructionTasks.HeldOutSet(world), 1, 2);
        var heldOutView = ml.Data.LoadFromEnumerable(heldOut.Select(e => new PromptRow { Prompt = e.Prompt }));
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        var answer = new GenerationOptions { MaxNewTokens = 8, StopStrings = ["\n"] };

        var clock = System.Diagnostics.Stopwatch.StartNew();
        var pairView = ml.Data.LoadFromEnumerable(pairs);
        using var rewardModel = implicitReward ? null : ml.Transforms.Text.TrainRewardModel(model, tokenizer, new RewardModelOptions
        {
            Method = FineTuningMethod.Full, MaxLength = 64,
            Training = new TrainingOptions { MaxSteps = 400, BatchSize = 8, LearningRate = 1e-4, WarmupSteps = 10, WeightDecay = 0, Seed = 1 },
        }).Fit(pairView);
        using var dpo = implicitReward ? ml.Transforms.Text.TrainDpo(model, tokenizer, new CausalLmDpoOptions
        {
            MaxLength = 64, Seed = 1, Generation = answer, Lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] },
            Dpo = new DpoOptions { RpoAlpha = 1.0 },
            Training = new TrainingOptions { MaxSteps = 60, BatchSize = 8, LearningRate = 3e-3, WarmupSteps = 5, WeightDecay = 0, Seed = 1 },
        }).Fit(pairView) : null;
        IRewardFunction reward = dpo is null ? rewardModel! : dpo.AsImplicitReward(model, tokenizer, maxLength: 64);
        if (dpo is null)
        {
            Console.WriteLine($"Reward model (full fine-tuning, 400 steps × 8 of {pairs.Length} pairs, persons 0–249): {clock.Elapsed:mm\\:ss}");
        }
        else
        {
            var heldOutPairs = InstructionTasks.GeneratePreferences(InstructionTasks.HeldOutSet(world), 1, 2)
                .Select(p => new PairRow { Prompt = p.Prompt, Chosen = p.Chosen, Rejected = p.Rejected });
            double accuracy = reward.EvaluatePreferences(ml.Data.LoadFromEnumerable(heldOutPairs)).Accuracy;
            Console.WriteLine($"Reward: DPO's implicit reward of DPO + RPO α 1 (LoRA r 8, 60 steps × 8 of {pairs.Length} pairs, persons 0–249, β 0.1) " +
                $"against the base model: {clock.Elapsed:mm\\:ss}; held-out pairwise accuracy {accuracy:P1}");
        }

        (double Score, double Right) Measure(ITransformer generator)
        {
            var texts = generator.Transform(heldOutView).GetColumn<string>("GeneratedText").ToList();
            var scores = reward.Score(heldOut.Select(e => e.Prompt).ToList(), texts);
            return (scores.Average(), texts.Zip(heldOut).Count(x => x.First.Trim() == x.Second.Response) / (double)heldOut.Count);
        }
        // InstructGPT's order: PPO may start from a model fine-tuned on demonstrations (sftSteps LoRA steps on the chosen answers, merged).
        using var sft = fromSft ? ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, new CausalLmFineTuningOptions
        {
            MaxLength = 64, Seed = 1, Generation = answer, Lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] },
            Training = new TrainingOptions { MaxSteps = sftSteps, BatchSize = 8, LearningRate = 3e-3, WarmupSteps = Math.Min(5, sftSteps - 1), WeightDecay = 0, Seed = 1 },
        }).Fit(ml.Data.LoadFromEnumerable(pairs.Select(p => new SftRow { Prompt = p.Prompt, Response = p.Chosen }))) : null;
        var start = sft?.Model ?? model;
        using (var untouched = ml.Transforms.Text.GenerateText(start, tokenizer, options: answer).Fit(heldOutView))
        {
            var (score, right) = Measure(untouched);
            Console.WriteLine($"{(fromSft ? $"SFT ({sftSteps} steps)" : "Base")} model on {heldOut.Count} held-out instructions (persons 300–399): mean reward {score:F3}, greedy answer right {right:P1}");
        }

        clock.Restart();
        var metrics = new List<(int Step, IReadOnlyDictionary<string, double> M)>();
        var options = new CausalLmPpoOptions
        {
            Reward = RlReward.From(reward), ValueModel = dpo is null ? ValueModelInit.FromRewardModel : ValueModelInit.FromPolicy, Seed = 1, Generation = answer,
            Lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] },
            Training = new TrainingOptions { MaxSteps = steps, BatchSize = batch, LearningRate = lr, WarmupSteps = 10, WeightDecay = 0, Seed = 1 },
            Ppo = new PpoOptions { NumMiniBatches = 2, KlCoef = klCoef, Sampling = new SamplingOptions { Temperature = 0.7, MaxNewTokens = 8, StopStrings = ["\n"] } },
            Progress = new SynchronousProgress<TrainingProgress>(p =>
            {
                metrics.Add((p.Step, p.Metrics!));
                if (p.Step % 40 != 0 && p.Step != 1) return;
                var m = p.Metrics!;
                Console.WriteLine($"| {p.Step} | {m["objective/scores"]:F3} | {m["objective/kl"]:F3} | {m["objective/rlhf_reward"]:F3} | {m["policy/clipfrac_avg"]:F3} | {m["loss/value_avg"]:F4} | {m["val/num_eos_tokens"]:F0} | {clock.Elapsed:mm\\:ss} |");
            }),
        };
        Console.WriteLine("| step | objective/scores | objective/kl | objective/rlhf_reward | policy/clipfrac_avg | loss/value_avg | val/num_eos_tokens | time |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|");
        using var tuned = ml.Transforms.Text.TrainPpo(start, tokenizer, options).Fit(ml.Data.LoadFromEnumerable(prompts));
        var (after, rightAfter) = Measure(tuned);
        double maxKl = metrics.Max(m => m.M["objective/kl"]);
        Console.WriteLine($"After PPO ({steps} updates of {batch}, lr {lr}, kl_coef {klCoef}, {clock.Elapsed:mm\\:ss}): held-out mean reward {after:F3}, greedy answer right {rightAfter:P1}; largest sampled KL {maxKl:F3}");
        foreach (var (e, text) in heldOut.Zip(tuned.Transform(heldOutView).GetColumn<string>("GeneratedText")).Take(5))
            Console.WriteLine($"  [{text.Trim()}] expected [{e.Response}]");
    }
}
