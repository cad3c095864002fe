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
        var libraryPerToken = new List<double>();
        var handPerToken = new List<double>();
        int sampledTokens = 0;
        var trainable = model.parameters().Concat(value.parameters()).Where(p => p.requires_grad).ToList();
        using var handOptimizer = optim.AdamW(trainable, lr: 1e-4, beta1: 0.9, beta2: 0.95, weight_decay: 0);
        var handRandom = new Random(11);
        for (int r = -1; r < Rounds; r++)
        {
            double meanLength = 0;
            var sw = Stopwatch.StartNew();
            new PpoTrainer(model, value, tokenizer, Length, Loop(8, 8, r + 10), ppoOptions, lora)
                .Train(Prompts, new SynchronousProgress<TrainingProgress>(p => meanLength = p.Metrics!["val/mean_response_length"]));
            double whole = sw.Elapsed.TotalSeconds;
            sw.Restart();
            using (var sampled = Rollout.Sample(model, tokenizer, Prompts.Take(16).ToList(), promptIds.Take(16).ToList(), Sampling, seed: r)) sampledTokens = sampled.ResponseLengths.Sum();
            double sample = sw.Elapsed.TotalSeconds;
            sw.Restart();
            int handTokens = HandWrittenPpoCycle(model, value, lora, tokenizer, promptIds, handOptimizer, trainable, handRandom);
            double handTime = sw.Elapsed.TotalSeconds;
            if (r < 0) continue;   // warm-up
            cycle.Add(whole);
            sampling.Add(sample);
            libraryPerToken.Add(whole / (meanLength * 16));
            handPerToken.Add(handTime / handTokens);
        }
        Console.WriteLine($"| PPO cycle (rollout of 16, 8 updates of 8): total {Median(cycle) * 1000:F0} ms, generation {Median(sampling) * 1000:F0} ms ({sampledTokens} tokens in the last) | generation {Median(sampling) / Median(cycle):P0} of the cycle |");
        Console.WriteLine($"| PPO cycle per sampled token, library vs hand-written TorchSharp (same sampling, loss, GAE and updates written out) | {Median(libraryPerToken) * 1000:F1} ms vs {Median(handPerToken) * 1000:F1} ms = {Median(libraryPerToken) / Median(handPerToken):F3} |");

        // GRPO step: 2 prompts × 8 completions. The hand-written side samples with the same generator, then computes
        // the loss with plain TorchSharp and takes an AdamW step.
        var policyTrainable = model.parameters().Where(p => p.requires_grad).ToList();
        using var optimizer = optim.AdamW(policyTrainable, lr: 1e-4, beta1: 0.9, beta2: 0.95, weight_decay: 0);
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
                nn.utils.clip_grad_norm_(policyTrainable, 1.0);
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

    /// <summary>
    /// One PPO rollout of 16 and 8 updates (4 epochs × 2 minibatches of 8) written out in plain TorchSharp, with TRL's
    /// defaults (k1 KL, kl_coef 0.05, γ 1, λ 0.95, clip 0.2, value clip 0.2, vf_coef 0.1); returns the sampled tokens.
    /// </summary>
    private static int HandWrittenPpoCycle(CausalLanguageModel model, CausalLmForSequenceClassification value, LoraModel lora, Tokenization.TextTokenizer tokenizer,
        List<IReadOnlyList<int>> promptIds, optim.Optimizer optimizer, List<TorchSharp.Modules.Parameter> trainable, Random random)
    {
        using var scope = NewDisposeScope();
        var picked = Enumerable.Range(0, 16).Select(_ => random.Next(Prompts.Length)).ToList();
        using var rollout = Rollout.Sample(model, tokenizer, picked.Select(i => Prompts[i]).ToList(), picked.Select(i => promptIds[i]).ToList(), Sampling, random.NextInt64());
        int context = rollout.ContextLength, length = (int)rollout.Responses.shape[1];
        var mask = rollout.ResponseMask;
        Tensor LogProbs(Tensor ids, Tensor attention, Tensor responses) =>
            model.Forward(ids, attention).narrow(1, context - 1, length).log_softmax(-1).gather(2, responses.unsqueeze(-1)).squeeze(-1);
        Tensor Values(Tensor ids, Tensor attention) => value.ForwardAllPositions(ids, attention).select(-1, 0).narrow(1, context - 1, length);
        Tensor old, reference, oldValues, advantages, returns;
        using (no_grad())
        {
            model.eval();
            old = LogProbs(rollout.Ids, rollout.AttentionMask, rollout.Responses) * mask;
            using (lora.DisableAdapters()) reference = LogProbs(rollout.Ids, rollout.AttentionMask, rollout.Responses) * mask;
            oldValues = Values(rollout.Ids, rollout.AttentionMask) * mask;
            var scores = tensor(Length.Score(rollout.Prompts, rollout.Texts));
            var rewards = (old - reference) * -0.05;
            var last = tensor(rollout.ResponseLengths.Select(l => (long)l - 1).ToArray()).unsqueeze(1);
            rewards = rewards.scatter_add(1, last, scores.unsqueeze(1));
            var columns = new Tensor[length];
            Tensor lastAdvantage = zeros(16), next = zeros(16);
            for (int t = length - 1; t >= 0; t--)
            {
                var delta = rewards.select(1, t) + next - oldValues.select(1, t);
                lastAdvantage = delta + lastAdvantage * 0.95;
                columns[t] = lastAdvantage;
                next = oldValues.select(1, t);
            }
            advantages = stack(columns, 1);
            returns = advantages + oldValues;
            var mean = (advantages * mask).sum() / mask.sum();
            var variance = (((advantages - mean) * (advantages - mean)) * mask).sum() / (mask.sum() - 1);
            advantages = (advantages - mean) / (variance + 1e-8).sqrt() * mask;
        }
        for (int epoch = 0; epoch < 4; epoch++)
        {
            var order = Enumerable.Range(0, 16).OrderBy(_ => random.Next()).ToArray();
            for (int m = 0; m < 2; m++)
            {
                using var step = NewDisposeScope();
                var rows = tensor(order.Skip(m * 8).Take(8).Select(i => (long)i).ToArray());
                var ids = rollout.Ids.index_select(0, rows);
                var attention = rollout.AttentionMask.index_select(0, rows);
                var rowMask = mask.index_select(0, rows);
                optimizer.zero_grad();
                var ratio = (LogProbs(ids, attention, rollout.Responses.index_select(0, rows)) - old.index_select(0, rows)).exp();
                var a = advantages.index_select(0, rows);
                var policyLoss = ((-a * ratio).maximum(-a * ratio.clamp(0.8, 1.2)) * rowMask).sum() / rowMask.sum();
                var v = Values(ids, attention);
                var oldV = oldValues.index_select(0, rows);
                var ret = returns.index_select(0, rows);
                var clippedV = v.clamp(oldV - 0.2, oldV + 0.2);
                var valueLoss = (((v - ret).square()).maximum((clippedV - ret).square()) * rowMask).sum() / rowMask.sum() * 0.5;
                (policyLoss + valueLoss * 0.1).backward();
                nn.utils.clip_grad_norm_(trainable, 1.0);
                optimizer.step();
            }
        }
        return rollout.ResponseLengths.Sum();
    }

    private static double Median(List<double> xs) => xs.Order().ElementAt(xs.Count / 2);
}
