using System.Diagnostics;
using MLNetPeft.Architectures;
using MLNetPeft.BaseModel;
using MLNetPeft.Training;
using MLNetPeft.Training.Grpo;
using MLNetPeft.Training.Ppo;
using MLNetPeft.Training.Reinforcement;
using MLNetPeft.Training.RewardModeling;
using MLNetPeft.Tuners.Lora;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Benchmarks;

/// <summary>
/// RL on the bundled model (LoRA r 8 all-linear): rollout tokens per second, the share of a PPO rollout-and-update
/// cycle spent generating, and a GRPO step of the library against the same sampling followed by a hand-written
/// TorchSharp loss and AdamW update. Rounds alternate between the sides; the medians are compared.
/// </summary>
internal static class RlBenchmark
{
    private const int Rounds = 5, ResponseTokens = 32;
    private static readonly string[] Prompts = Enumerable.Range(0, 64).Select(i => $"{i % 50} plus {(i * 7) % 50} is").ToArray();
    // A reward that every response gets a different value from: advantages are never all zero.
    private static readonly IRewardFunction Length = RewardFunction.FromDelegate((_, response) => response.Length / 100f);
    // No stop string: responses run to ResponseTokens unless they emit eos; both sides sample the same way.
    private static readonly SamplingOptions Sampling = new() { Temperature = 1.0, MaxNewTokens = ResponseTokens };

    public static void Run()
    {
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        using var lora = LoraModel.Apply(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] }, seed: 1);
        var promptIds = Prompts.Select(p => (IReadOnlyList<int>)tokenizer.Encode(p)).ToList();
        // A row may still stop early at eos: tokens are counted, not assumed.
        Console.WriteLine("| RL, bundled model, LoRA r 8 | figure |");
        Console.WriteLine("|---|---|");
        foreach (int rows in new[] { 1, 16, 64 })
        {
            var times = new List<double>();
            long tokens = 0;
            for (int r = 0; r < Rounds; r++)
            {
                var sw = Stopwatch.StartNew();
                using var rollout = Rollout.Sample(model, tokenizer, Prompts.Take(rows).ToList(), promptIds.Take(rows).ToList(), Sampling, seed: r);
                times.Add(sw.Elapsed.TotalSeconds);
                tokens = rollout.ResponseLengths.Sum();
            }
            Console.WriteLine($"| rollout tokens per second, {rows} prompt(s) × up to {ResponseTokens} tokens | {tokens / Median(times):F0} |");
        }

        // PPO: one rollout of 16 then 4 epochs × 2 minibatches of 8 = 8 updates; generation's share of that cycle.
        using var valueBackbone = BundledBaseModel.Load();
        var value = new CausalLmForSequenceClassification(valueBackbone, seed: 1);
        var ppoOptions = new PpoOptions { NumPpoEpochs = 4, NumMiniBatches = 2, Sampling = Sampling };
        TrainingOptions Loop(int steps, int batch, int seed) => new() { MaxSteps = steps, BatchSize = batch, LearningRate = 1e-4, WarmupSteps = 0, WeightDecay = 0, Seed = seed };
        var cycle = new List<double>();
        var sampling = new List<double>();
        int sampledTokens = 0;
        for (int r = -1; r < Rounds; r++)
        {
            var sw = Stopwatch.StartNew();
            new PpoTrainer(model, value, tokenizer, Length, Loop(8, 8, r + 10), ppoOptions, lora).Train(Prompts);
            double whole = sw.Elapsed.TotalSeconds;
            sw.Restart();
            using (var sampled = Rollout.Sample(model, tokenizer, Prompts.Take(16).ToList(), promptIds.Take(16).ToList(), Sampling, seed: r)) sampledTokens = sampled.ResponseLengths.Sum();
            if (r < 0) continue;   // warm-up
            cycle.Add(whole);
            sampling.Add(sw.Elapsed.TotalSeconds);
        }
        Console.WriteLine($"| PPO cycle (rollout of 16, 8 updates of 8): total {Median(cycle) * 1000:F0} ms, generation {Median(sampling) * 1000:F0} ms ({sampledTokens} tokens in the last) | generation {Median(sampling) / Median(cycle):P0} of the cycle |");

        // GRPO step: 2 prompts × 8 completions. The hand-written side samples with the same generator, then computes
        // the loss with plain TorchSharp and takes an AdamW step.
        var trainable = model.parameters().Where(p => p.requires_grad).ToList();
        using var optimizer = optim.AdamW(trainable, lr: 1e-4, beta1: 0.9, beta2: 0.95, weight_decay: 0);
        var grpo = new GrpoOptions { NumGenerations = 8, Sampling = Sampling };
        double Library(int round)
        {
            var sw = Stopwatch.StartNew();
            new GrpoTrainer(model, tokenizer, [new WeightedReward("length", Length)], Loop(4, 16, round + 100), grpo, lora).Train(Prompts);
            return sw.Elapsed.TotalSeconds / 4;
        }
        var random = new Random(3);
        double HandWritten()
        {
            var sw = Stopwatch.StartNew();
            for (int s = 0; s < 4; s++)
            {
                using var scope = NewDisposeScope();
                var picked = Enumerable.Range(0, 2).Select(_ => random.Next(Prompts.Length)).SelectMany(i => Enumerable.Repeat(i, 8)).ToList();
                using var rollout = Rollout.Sample(model, tokenizer, picked.Select(i => Prompts[i]).ToList(), picked.Select(i => promptIds[i]).ToList(), Sampling, random.NextInt64());
                var rewards = tensor(Length.Score(rollout.Prompts, rollout.Texts)).view(2, 8);
                var advantages = ((rewards - rewards.mean([1], keepdim: true)) / (rewards.std(1, keepdim: true) + 1e-4)).view(-1, 1);
                model.train();
                optimizer.zero_grad();
                var logits = model.Forward(rollout.Ids, rollout.AttentionMask).narrow(1, rollout.ContextLength - 1, rollout.Responses.shape[1]);
                var logps = logits.log_softmax(-1).gather(2, rollout.Responses.unsqueeze(-1)).squeeze(-1);
                var ratio = (logps - logps.detach()).exp();
                var perToken = -torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages);
                var loss = (perToken * rollout.ResponseMask).sum() / rollout.ResponseMask.sum();
                loss.backward();
                nn.utils.clip_grad_norm_(trainable, 1.0);
                optimizer.step();
            }
            return sw.Elapsed.TotalSeconds / 4;
        }
        Library(-1);
        HandWritten();
        var library = new List<double>();
        var hand = new List<double>();
        for (int r = 0; r < Rounds; r++)
        {
            library.Add(Library(r));
            hand.Add(HandWritten());
        }
        Console.WriteLine($"| GRPO step (2 prompts × 8 completions of {ResponseTokens} tokens): library {Median(library) * 1000:F0} ms, hand-written {Median(hand) * 1000:F0} ms | ratio {Median(library) / Median(hand):F3} |");
    }

    private static double Median(List<double> xs) => xs.Order().ElementAt(xs.Count / 2);
}
