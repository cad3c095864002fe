using System.Diagnostics;
using MLNetPeft.Architectures;
using MLNetPeft.BaseModel;
using MLNetPeft.Training;
using MLNetPeft.Training.Dpo;
using MLNetPeft.Training.RewardModeling;
using MLNetPeft.Tuners.Lora;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Benchmarks;

/// <summary>
/// A reward-model step and a DPO step of the library against hand-written TorchSharp steps on the same model and batch
/// (the bundled base model; 8 pairs of 32 prompt + 64 response tokens), and DPO with precomputed against on-the-fly
/// reference log-probabilities. Rounds alternate between the two sides; the medians are compared.
/// </summary>
internal static class PreferenceBenchmark
{
    private const int Pairs = 8, PromptTokens = 32, ResponseTokens = 64, StepsPerRound = 4, Rounds = 5;

    public static void Run()
    {
        var random = new Random(1);
        int vocab = BaseModelRecipe.VocabSize;
        List<int> Tokens(int n) => Enumerable.Range(0, n).Select(_ => random.Next(4, vocab)).ToList();
        var data = PreferencePairs.FromExamples(Enumerable.Range(0, 256).Select(_ => ((IReadOnlyList<int>)Tokens(PromptTokens),
            (IReadOnlyList<int>)Tokens(ResponseTokens), (IReadOnlyList<int>)Tokens(ResponseTokens), 0f)).ToList(), maxLength: PromptTokens + ResponseTokens);
        Console.WriteLine($"| preference step, bundled model, {Pairs} pairs × {PromptTokens + ResponseTokens} tokens per side | library ms | hand-written ms | ratio |");
        Console.WriteLine("|---|---|---|---|");
        RewardSteps(data);
        DpoSteps(data);
    }

    private static TrainingOptions Options(int seed) => new() { MaxSteps = StepsPerRound, BatchSize = Pairs, LearningRate = 1e-4, WarmupSteps = 0, MaxGradNorm = 1.0, Seed = seed };

    private static void RewardSteps(PreferencePairs data)
    {
        using var model = new CausalLmForSequenceClassification(BundledBaseModel.Load(), numLabels: 1, padTokenId: 0, seed: 1);
        model.train();
        var trainable = model.parameters().Where(p => p.requires_grad).ToList();
        using var optimizer = optim.AdamW(trainable, lr: 1e-4, beta1: 0.9, beta2: 0.95, weight_decay: 0.1);
        var random = new Random(0);
        double Library(int round)
        {
            var sw = Stopwatch.StartNew();
            new RewardModelTrainer(model, Options(round)).Train(data);
            return sw.Elapsed.TotalSeconds / StepsPerRound;
        }
        double HandWritten()
        {
            var sw = Stopwatch.StartNew();
            for (int s = 0; s < StepsPerRound; s++)
            {
                using var scope = NewDisposeScope();
                var batch = Enumerable.Range(0, Pairs).Select(_ => data.Pairs[random.Next(data.Count)]).ToList();
                var ids = Ids(batch.Select(p => p.Chosen).Concat(batch.Select(p => p.Rejected)));
                optimizer.zero_grad();
                var rewards = model.Forward(ids, ones_like(ids)).squeeze(-1);
                var loss = -nn.functional.logsigmoid(rewards.narrow(0, 0, Pairs) - rewards.narrow(0, Pairs, Pairs)).mean();
                loss.backward();
                nn.utils.clip_grad_norm_(trainable, 1.0);
                optimizer.step();
            }
            return sw.Elapsed.TotalSeconds / StepsPerRound;
        }
        var (library, hand) = Compare(Library, _ => HandWritten());
        Console.WriteLine($"| reward model, full fine-tuning | {library * 1000:F0} | {hand * 1000:F0} | {library / hand:F3} |");
    }

    private static void DpoSteps(PreferencePairs data)
    {
        using var model = BundledBaseModel.Load();
        using var lora = LoraModel.Apply(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] }, seed: 1);
        var trainable = model.parameters().Where(p => p.requires_grad).ToList();
        using var optimizer = optim.AdamW(trainable, lr: 1e-4, beta1: 0.9, beta2: 0.95, weight_decay: 0.1);
        var random = new Random(0);
        const double beta = 0.1;
        // The response tokens' log-probabilities summed per row: position t predicts token t + 1.
        Tensor ResponseLogps(Tensor ids)
        {
            var logps = model.Forward(ids).narrow(1, PromptTokens - 1, ResponseTokens).log_softmax(-1);
            return logps.gather(2, ids.narrow(1, PromptTokens, ResponseTokens).unsqueeze(-1)).squeeze(-1).sum(1);
        }
        double Library(bool precompute, int round)
        {
            var trainer = new DpoTrainer(model, Options(round), new DpoOptions { PrecomputeReferenceLogProbs = precompute }, lora);
            var sw = Stopwatch.StartNew();
            trainer.Train(data);
            return sw.Elapsed.TotalSeconds / StepsPerRound;
        }
        double HandWritten()
        {
            model.eval();   // DPO runs without dropout (TRL's disable_dropout), as the library does
            var sw = Stopwatch.StartNew();
            for (int s = 0; s < StepsPerRound; s++)
            {
                using var scope = NewDisposeScope();
                var batch = Enumerable.Range(0, Pairs).Select(_ => data.Pairs[random.Next(data.Count)]).ToList();
                var ids = Ids(batch.Select(p => p.Chosen).Concat(batch.Select(p => p.Rejected)));
                Tensor reference;
                using (no_grad())
                using (lora.DisableAdapters())
                    reference = ResponseLogps(ids);
                optimizer.zero_grad();
                var policy = ResponseLogps(ids);
                var h = (policy.narrow(0, 0, Pairs) - policy.narrow(0, Pairs, Pairs)) - (reference.narrow(0, 0, Pairs) - reference.narrow(0, Pairs, Pairs));
                var loss = -nn.functional.logsigmoid(h * beta).mean();
                loss.backward();
                nn.utils.clip_grad_norm_(trainable, 1.0);
                optimizer.step();
            }
            return sw.Elapsed.TotalSeconds / StepsPerRound;
        }
        var (library, hand) = Compare(r => Library(false, r), _ => HandWritten());
        Console.WriteLine($"| DPO, LoRA r 8 all-linear, reference = adapters disabled (on the fly) | {library * 1000:F0} | {hand * 1000:F0} | {library / hand:F3} |");

        // Precomputed: Train first scores every pair with the reference once; the steps then skip the reference pass.
        var precomputeTimes = new List<double>();
        var (onTheFly, precomputed) = Compare(r => Library(false, r), r =>
        {
            var sw = Stopwatch.StartNew();
            new DpoTrainer(model, Options(r), adapter: lora).ReferenceLogProbs(data);
            double once = sw.Elapsed.TotalSeconds;
            precomputeTimes.Add(once);
            return Library(true, r) - once / StepsPerRound;
        });
        double perPair = precomputeTimes.Order().ElementAt(precomputeTimes.Count / 2) / data.Count;
        Console.WriteLine($"| DPO step, precomputed vs on-the-fly reference (library both; precomputing costs {perPair * 1000:F1} ms per pair, once) | {precomputed * 1000:F0} | {onTheFly * 1000:F0} | {precomputed / onTheFly:F3} |");
    }

    private static Tensor Ids(IEnumerable<IReadOnlyList<int>> rows)
    {
        var list = rows.ToList();
        return tensor(list.SelectMany(r => r.Select(i => (long)i)).ToArray(), [list.Count, list[0].Count]);
    }

    /// <summary>Medians of alternating rounds of <paramref name="a"/> and <paramref name="b"/> (each given the round; one warm-up each first).</summary>
    private static (double A, double B) Compare(Func<int, double> a, Func<int, double> b)
    {
        a(-1);
        b(-1);
        var first = new List<double>();
        var second = new List<double>();
        for (int r = 0; r < Rounds; r++)
        {
            first.Add(a(r));
            second.Add(b(r));
        }
        return (Median(first), Median(second));
    }

    private static double Median(List<double> xs) => xs.Order().ElementAt(xs.Count / 2);
}
