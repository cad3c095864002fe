using MLNetPeft.Architectures;
using MLNetPeft.Training.Grpo;
using MLNetPeft.Training.Ppo;
using MLNetPeft.Training.Reinforcement;
using MLNetPeft.Training.RewardModeling;
using MLNetPeft.Tuners.Lora;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Tests;

public class ReinforcementTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static Tensor T(float[,] values) => tensor(values);

    /// <summary>Float32 tensors against formulas in double: equal within <paramref name="tolerance"/> (rounding to places fails at half-way values).</summary>
    private static void Near(double expected, double actual, double tolerance) =>
        Assert.True(Math.Abs(expected - actual) <= tolerance, $"expected {expected}, got {actual} (tolerance {tolerance})");

    [Fact]
    public void GaeIsTheRecursionFromTheLastTokenBackwards()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        // Row 1 ends after two tokens: its rewards and values are 0 afterwards, as PPO masks them.
        float[,] rewards = { { 0.1f, -0.2f, 0.05f, 1.5f }, { -0.1f, 2.0f, 0, 0 } };
        float[,] values = { { 0.3f, 0.6f, -0.4f, 0.9f }, { 0.2f, 1.1f, 0, 0 } };
        foreach (var (gamma, lambda) in new[] { (1.0, 0.95), (0.9, 0.5) })
        {
            var (advantages, returns) = PolicyGradient.Gae(T(rewards), T(values), gamma, lambda);
            for (int b = 0; b < 2; b++)
            {
                double next = 0, last = 0;
                for (int t = 3; t >= 0; t--)
                {
                    double delta = rewards[b, t] + gamma * next - values[b, t];
                    last = delta + gamma * lambda * last;
                    next = values[b, t];
                    Near(last, advantages[b, t].item<float>(), 1e-5);
                    Near(last + values[b, t], returns[b, t].item<float>(), 1e-5);
                }
            }
        }
        // With γ = λ = 1 the advantage of the first token is the whole reward minus its value.
        var (full, _) = PolicyGradient.Gae(T(rewards), T(values), 1, 1);
        Near(0.1 - 0.2 + 0.05 + 1.5 - 0.3, full[0, 0].item<float>(), 1e-5);
    }

    [Fact]
    public void BothKlEstimatorsAreSchulmansFormulas()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        float[,] logProbs = { { -1.2f, -0.3f, -4.0f } }, referenceLogProbs = { { -0.7f, -0.3f, -6.5f } };
        var k1 = PolicyGradient.Kl(T(logProbs), T(referenceLogProbs), KlEstimator.K1);
        var k3 = PolicyGradient.Kl(T(logProbs), T(referenceLogProbs), KlEstimator.K3);
        for (int t = 0; t < 3; t++)
        {
            double logRatio = referenceLogProbs[0, t] - logProbs[0, t];
            Near(logProbs[0, t] - referenceLogProbs[0, t], k1[0, t].item<float>(), 1e-5);
            Near(Math.Exp(logRatio) - 1 - logRatio, k3[0, t].item<float>(), 1e-5);
            Assert.True(k3[0, t].item<float>() >= 0);
        }
        Near(0, k3[0, 1].item<float>(), 1e-6);   // same probability: no divergence
    }

    [Fact]
    public void ClippedPolicyAndValueLossesArePposFormulas()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        float[,] logProbs = { { -1.0f, -2.0f, -0.5f, -3.0f } }, old = { { -1.5f, -1.8f, -0.5f, -2.0f } }, advantages = { { 1.0f, -0.5f, 2.0f, -1.0f } };
        var (losses, clipped) = PolicyGradient.ClippedPolicyLosses(T(logProbs), T(old), T(advantages), 0.2, 0.3);
        for (int t = 0; t < 4; t++)
        {
            double ratio = Math.Exp(logProbs[0, t] - old[0, t]);
            double a = advantages[0, t];
            double unclipped = -a * ratio, clippedTerm = -a * Math.Clamp(ratio, 0.8, 1.3);
            Near(Math.Max(unclipped, clippedTerm), losses[0, t].item<float>(), 1e-5);
            Assert.Equal(clippedTerm > unclipped, clipped[0, t].item<bool>());
        }
        float[,] v = { { 0.5f, 1.6f, -0.9f } }, oldV = { { 0.4f, 1.0f, -0.2f } }, returns = { { 2.0f, 1.0f, 0.0f } };
        var (valueLosses, valueClipped) = PolicyGradient.ClippedValueLosses(T(v), T(oldV), T(returns), 0.2);
        for (int t = 0; t < 3; t++)
        {
            double clippedValue = Math.Clamp(v[0, t], oldV[0, t] - 0.2, oldV[0, t] + 0.2);
            double a = Math.Pow(v[0, t] - returns[0, t], 2), b = Math.Pow(clippedValue - returns[0, t], 2);
            Near(Math.Max(a, b), valueLosses[0, t].item<float>(), 1e-5);
            Assert.Equal(b > a, valueClipped[0, t].item<bool>());
        }
    }

    [Fact]
    public void WhiteningUsesOnlyTheMaskedPositions()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        float[,] values = { { 1, 2, 3, 100 }, { 4, -5, 100, 100 } };
        float[,] mask = { { 1, 1, 1, 0 }, { 1, 1, 0, 0 } };
        double[] inside = [1, 2, 3, 4, -5];
        double mean = inside.Average(), variance = inside.Sum(x => (x - mean) * (x - mean)) / (inside.Length - 1);
        var whitened = PolicyGradient.MaskedWhiten(T(values), T(mask));
        var scaled = PolicyGradient.MaskedWhiten(T(values), T(mask), shiftMean: false);
        Near(mean, PolicyGradient.MaskedMean(T(values), T(mask)).item<float>(), 1e-5);
        Near(variance, PolicyGradient.MaskedVariance(T(values), T(mask)).item<float>(), 1e-4);
        Near((2 - mean) / Math.Sqrt(variance + 1e-8), whitened[0, 1].item<float>(), 1e-5);
        Near((-5 - mean) / Math.Sqrt(variance + 1e-8) + mean, scaled[1, 1].item<float>(), 1e-5);
    }

    [Fact]
    public void TheScoreLandsOnEachResponsesLastRealTokenWhateverThePadding()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        const int eos = 96;
        // Prompts of different lengths (left-padded), responses of different lengths (right-padded) with pad = eos:
        // one ends with eos, one never emits it (cut at the length limit), one is eos alone.
        var rollout = Rollout.FromTokens(CPU, ["ab", "abcd", "a"], [[1, 2], [1, 2, 3, 4], [1]], [[10, 11, eos], [12, 13, 14, 15], [eos]],
            ["xy", "zzzz", ""], [true, false, true], padId: eos);
        Assert.Equal(4, rollout.ContextLength);
        Assert.Equal([3, 4, 1], rollout.ResponseLengths);
        var zero = zeros(3, 4);
        var rewards = PpoTrainer.TokenRewards(rollout, zero, zero, [1.5f, -2f, 0.25f], klCoef: 0.05, KlEstimator.K1);
        float[,] expected = { { 0, 0, 1.5f, 0 }, { 0, 0, 0, -2f }, { 0.25f, 0, 0, 0 } };
        TensorAssert.Close(T(expected), rewards, 1e-7, "rewards");
        // The KL penalty is −kl_coef · (log π − log π_ref) on real tokens only.
        var logProbs = full(3, 4, -1f);
        var withKl = PpoTrainer.TokenRewards(rollout, logProbs, full(3, 4, -1.5f), [0f, 0f, 0f], klCoef: 0.1, KlEstimator.K1);
        Near(-0.05, withKl[0, 1].item<float>(), 1e-6);
        Near(0, withKl[0, 3].item<float>(), 1e-6);
        Near(0, withKl[2, 1].item<float>(), 1e-6);
        // The ids put every prompt's last token in the column before the responses, and the padding outside the mask.
        Assert.Equal(new long[] { eos, eos, eos, 1, eos, eos, eos, eos }, rollout.Ids[2].data<long>().ToArray());
        Assert.Equal(new long[] { 0, 0, 0, 1, 1, 0, 0, 0 }, rollout.AttentionMask[2].data<long>().ToArray());
    }

    // A tiny Llama over the test tokenizer's 97 characters, initialised as HF does (nearly uniform outputs: it explores).
    private static LlamaForCausalLM Policy(long seed)
    {
        var config = TinyModels.Llama();
        config.VocabSize = TinyTokenizer.VocabSize;
        var model = new LlamaForCausalLM(config);
        model.InitializeWeights(seed);
        return model;
    }

    private static CausalLmForSequenceClassification ValueModel(long seed) => new(Policy(seed), seed: seed);

    private static readonly string[] Prompts = Enumerable.Range(0, 24).Select(i => $"{(char)('a' + i)}{(char)('z' - i)}:").ToArray();

    /// <summary>The share of a response's characters that are digits: about 10 % for a uniform policy.</summary>
    private static readonly IRewardFunction Digits = RewardFunction.FromDelegate((_, response) => response.Length == 0 ? 0f : Math.Min(1f, response.Count(char.IsAsciiDigit) / 6f));

    private static TrainingOptions Options(int steps, double lr = 1e-2, string? folder = null) => new()
    {
        MaxSteps = steps, BatchSize = 8, LearningRate = lr, WarmupSteps = 0, MinLearningRate = lr, WeightDecay = 0, Seed = 3, CheckpointFolder = folder,
    };

    private static PpoOptions Ppo(double klCoef = 0.05) => new()
    {
        NumPpoEpochs = 2, NumMiniBatches = 2, KlCoef = klCoef, Sampling = new SamplingOptions { Temperature = 1.0, MaxNewTokens = 6 },
    };

    private sealed record PpoRun(List<IReadOnlyDictionary<string, double>> Metrics, LlamaForCausalLM Policy, LoraModel Adapter) : IDisposable
    {
        public void Dispose() { Adapter.Dispose(); Policy.Dispose(); }
    }

    private static PpoRun RunPpo(int steps, double klCoef = 0.05, string? folder = null, CancellationToken cancel = default, Action<TrainingProgress>? onStep = null)
    {
        var policy = Policy(1);
        var adapter = LoraModel.Apply(policy, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"] }, seed: 2);
        var value = ValueModel(1);
        var metrics = new List<IReadOnlyDictionary<string, double>>();
        var trainer = new PpoTrainer(policy, value, TinyTokenizer.Create(), Digits, Options(steps, folder: folder), Ppo(klCoef), adapter);
        try
        {
            trainer.Train(Prompts, SynchronousProgress.Create<TrainingProgress>(p => { metrics.Add(p.Metrics!); onStep?.Invoke(p); }), cancel);
        }
        catch
        {
            adapter.Dispose();
            policy.Dispose();
            throw;
        }
        return new PpoRun(metrics, policy, adapter);
    }

    private static double Mean(IEnumerable<IReadOnlyDictionary<string, double>> metrics, string name) => metrics.Average(m => m[name]);

    [Fact]
    public void PpoRaisesTheRewardWhileTheKlToTheReferenceStaysBounded()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        // 2 epochs × 2 minibatches of 8: one rollout of 16 responses every 4 updates.
        using var run = RunPpo(steps: 160, klCoef: 0.1);
        var m = run.Metrics;
        double first = Mean(m.Take(16), "objective/scores"), last = Mean(m.TakeLast(16), "objective/scores");
        double kl = m.TakeLast(16).Max(x => x["objective/kl"]);
        output.WriteLine($"scores {first:F3} -> {last:F3}; KL at the end {kl:F3}; clipfrac {Mean(m, "policy/clipfrac_avg"):F3}; " +
            $"value loss {Mean(m.Take(16), "loss/value_avg"):F4} -> {Mean(m.TakeLast(16), "loss/value_avg"):F4}");
        double objectiveFirst = Mean(m.Take(16), "objective/rlhf_reward"), objectiveLast = Mean(m.TakeLast(16), "objective/rlhf_reward");
        double klLast = Mean(m.TakeLast(16), "objective/kl");
        output.WriteLine($"score − β·KL {objectiveFirst:F3} -> {objectiveLast:F3}; mean KL over the last 4 rollouts {klLast:F3}");
        Assert.True(last > first + 0.15, $"scores {first:F3} -> {last:F3}");
        Assert.True(objectiveLast > objectiveFirst + 0.05, $"score − β·KL {objectiveFirst:F3} -> {objectiveLast:F3}");
        // Scores lie in [0, 1], so the optimum of E[score] − β·KL is no further than β·KL ≤ 1 from the reference: KL ≤ 1 / β.
        // (Each rollout's KL is an estimate from 16 responses; the mean of the last four is what is bounded. Without the
        // penalty the KL passes 25 in half the steps: ALargeKlCoefficientKeepsThePolicyCloseToTheReference.)
        Assert.True(klLast < 1 / 0.1, $"mean KL {klLast:F3}, above 1/β");
        Assert.All(new[] { "objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward", "policy/approxkl_avg", "policy/clipfrac_avg",
            "loss/policy_avg", "loss/value_avg", "val/num_eos_tokens" }, key => Assert.True(m[^1].ContainsKey(key), key));

        // The reference is exactly the base: with the adapter disabled the policy gives the untouched model's log-probabilities.
        using var untouched = Policy(1);
        untouched.eval();
        var rollout = Rollout.FromTokens(CPU, ["ab:"], [[1, 2, 3]], [[17, 18, 19]], ["123"], [false], padId: 96);
        var reference = new ReferenceModel("test", run.Policy, run.Adapter, null).Run(model =>
            Rollout.ResponseLogProbs(model, rollout.Ids, rollout.AttentionMask, rollout.Responses, rollout.ResponseMask, rollout.ContextLength, 1.0).LogProbs);
        using (no_grad())
        {
            var expected = Rollout.ResponseLogProbs(untouched, rollout.Ids, rollout.AttentionMask, rollout.Responses, rollout.ResponseMask, rollout.ContextLength, 1.0).LogProbs;
            TensorAssert.Close(expected, reference, 1e-6, "reference log-probabilities");
            var policyNow = Rollout.ResponseLogProbs(run.Policy, rollout.Ids, rollout.AttentionMask, rollout.Responses, rollout.ResponseMask, rollout.ContextLength, 1.0).LogProbs;
            Assert.True((policyNow - expected).abs().max().item<float>() > 1e-3, "the policy itself moved");
        }
    }

    [Fact]
    public void ALargeKlCoefficientKeepsThePolicyCloseToTheReference()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        using var free = RunPpo(steps: 80, klCoef: 0);
        using var held = RunPpo(steps: 80, klCoef: 2.0);
        double freeKl = Mean(free.Metrics.TakeLast(16), "objective/kl"), heldKl = Mean(held.Metrics.TakeLast(16), "objective/kl");
        output.WriteLine($"KL at the end: kl_coef 0 -> {freeKl:F4}, kl_coef 2 -> {heldKl:F4}");
        Assert.True(heldKl < 0.5, $"KL with kl_coef 2: {heldKl:F4}");
        Assert.True(heldKl < freeKl / 3, $"KL {heldKl:F4} vs {freeKl:F4} without penalty");
    }

    [Fact]
    public void SeededPpoIsRepeatableAndResumesMidRolloutExactly()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        using var once = RunPpo(steps: 10);
        using var twice = RunPpo(steps: 10);
        foreach (var (name, expected) in once.Policy.state_dict()) TensorAssert.BitIdentical(expected, twice.Policy.state_dict()[name], name);

        using var dir = new TempFolder();
        using var cts = new CancellationTokenSource();
        // Step 6 is in the middle of the second rollout (4 updates each): the checkpoint must carry that rollout.
        Assert.ThrowsAny<OperationCanceledException>(() => RunPpo(steps: 10, folder: dir.Path, cancel: cts.Token, onStep: p => { if (p.Step == 6) cts.Cancel(); }).Dispose());
        using var resumed = RunPpo(steps: 10, folder: dir.Path);
        Assert.Equal(4, resumed.Metrics.Count);
        foreach (var (name, expected) in once.Policy.state_dict()) TensorAssert.BitIdentical(expected, resumed.Policy.state_dict()[name], name);
    }

    [Fact]
    public void GroupAdvantagesAndTheDapoLossAreTrlsFormulas()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        float[] rewards = [1, 0, 0, 1, 0.5f, 0.5f, 0.5f, 0.5f];
        var (advantages, std) = GrpoTrainer.GroupAdvantages(tensor(rewards), 4, scale: true);
        double groupStd = Math.Sqrt(4 * 0.25 / 3);   // mean 0.5, Bessel-corrected
        Near(0.5 / (groupStd + 1e-4), advantages[0].item<float>(), 1e-4);
        Near(-0.5 / (groupStd + 1e-4), advantages[1].item<float>(), 1e-4);
        Near(0, advantages[5].item<float>(), 1e-6);   // a group that agrees teaches nothing
        Near(groupStd, std[0].item<float>(), 1e-5);
        Near(-0.5, GrpoTrainer.GroupAdvantages(tensor(rewards), 4, scale: false).Advantages[1].item<float>(), 1e-6);

        float[,] logProbs = { { -1, -2, 0 }, { -0.5f, 0, 0 } }, old = { { -1.5f, -1.5f, 0 }, { -0.1f, 0, 0 } }, mask = { { 1, 1, 0 }, { 1, 0, 0 } }, reference = { { -1.2f, -2.5f, 0 }, { -0.5f, 0, 0 } };
        float[] a = [2f, -1f];
        var loss = GrpoTrainer.Loss(T(logProbs), T(old), tensor(a), T(mask), 0.2, 0.28, beta: 0.04, referenceLogProbs: T(reference)).item<float>();
        double sum = 0;
        foreach (var (b, t) in new[] { (0, 0), (0, 1), (1, 0) })
        {
            double ratio = Math.Exp(logProbs[b, t] - old[b, t]);
            double objective = Math.Min(ratio * a[b], Math.Clamp(ratio, 0.8, 1.28) * a[b]);
            double logRatio = reference[b, t] - logProbs[b, t];
            sum += -objective + 0.04 * (Math.Exp(logRatio) - logRatio - 1);
        }
        Near(sum / 3, loss, 1e-5);
    }

    [Fact]
    public void GrpoRaisesTheRewardOfAVerifiableTask()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        using var policy = Policy(1);
        using var adapter = LoraModel.Apply(policy, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"] }, seed: 2);
        var metrics = new List<IReadOnlyDictionary<string, double>>();
        var grpo = new GrpoOptions { NumGenerations = 8, Sampling = new SamplingOptions { Temperature = 1.0, MaxNewTokens = 6 } };
        var options = Options(60);
        options.BatchSize = 16;
        var result = new GrpoTrainer(policy, TinyTokenizer.Create(), [new WeightedReward("digits", Digits)], options, grpo, adapter)
            .Train(Prompts, SynchronousProgress.Create<TrainingProgress>(p => metrics.Add(p.Metrics!)));
        double first = Mean(metrics.Take(10), "reward"), last = Mean(metrics.TakeLast(10), "reward");
        output.WriteLine($"GRPO reward {first:F3} -> {last:F3}; zero-std groups {Mean(metrics.TakeLast(10), "frac_reward_zero_std"):P0}");
        Assert.Equal(60, result.Steps);
        Assert.True(last > first + 0.15, $"reward {first:F3} -> {last:F3}");
        Near(last, Mean(metrics.TakeLast(10), "rewards/digits/mean"), 1e-6);
    }

    [Fact]
    public void BadRewardsTokenizersAndBatchesAreNamed()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        using var policy = Policy(1);
        using var adapter = LoraModel.Apply(policy, new LoraConfig { R = 2, TargetModules = ["q_proj"] }, seed: 2);
        var tokenizer = TinyTokenizer.Create();
        var nan = RewardFunction.FromDelegate((prompt, _) => prompt.StartsWith('c') ? float.NaN : 1f);
        var trainer = new PpoTrainer(policy, ValueModel(1), tokenizer, nan, Options(4), Ppo(), adapter);
        var error = Assert.Throws<InvalidOperationException>(() => trainer.Train(["ab:", "cd:"]));
        Assert.Contains("NaN", error.Message);
        Assert.Contains("prompt \"cd:\"", error.Message);
        Assert.Contains("row", error.Message);

        Assert.Contains("shares weights", Assert.Throws<ArgumentException>(() =>
            new PpoTrainer(policy, new CausalLmForSequenceClassification(policy), tokenizer, Digits, Options(4), Ppo(), adapter)).Message);
        var grpoOptions = Options(4);
        grpoOptions.BatchSize = 12;
        Assert.Contains("multiple of NumGenerations", Assert.Throws<ArgumentException>(() =>
            new GrpoTrainer(policy, tokenizer, [new WeightedReward("digits", Digits)], grpoOptions, new GrpoOptions { NumGenerations = 8 })).Message);
        Assert.Contains("one reference", Assert.Throws<ArgumentException>(() =>
            new GrpoTrainer(policy, tokenizer, [new WeightedReward("digits", Digits)], Options(4), new GrpoOptions { NumGenerations = 4, Beta = 0.1 })).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new PpoTrainer(policy, ValueModel(1), tokenizer, Digits, Options(4), new PpoOptions { Lambda = 1.5 }, adapter));
    }
}
