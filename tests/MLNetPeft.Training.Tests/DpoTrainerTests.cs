using MLNetPeft.Architectures;
using MLNetPeft.Training.Dpo;
using MLNetPeft.Tuners;
using MLNetPeft.Tuners.Lora;
using MLNetPeft.Tuners.PrefixTuning;
using MLNetPeft.Tuners.Selective;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Tests;

public class DpoTrainerTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static double LogSigmoid(double x) => x >= 0 ? -Math.Log(1 + Math.Exp(-x)) : x - Math.Log(1 + Math.Exp(x));

    [Theory]
    [InlineData(DpoLossType.Sigmoid, 0.1, 0.0)]
    [InlineData(DpoLossType.Sigmoid, 0.5, 0.2)]
    [InlineData(DpoLossType.Robust, 0.1, 0.2)]
    [InlineData(DpoLossType.Hinge, 0.1, 0.0)]
    [InlineData(DpoLossType.Hinge, 2.0, 0.0)]
    [InlineData(DpoLossType.Ipo, 0.1, 0.0)]
    [InlineData(DpoLossType.Ipo, 0.5, 0.0)]
    public void EachLossIsTrlsFormula(DpoLossType type, double beta, double epsilon)
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        double[] pc = [-3.0, -10.5, -2.0, -7.25], pr = [-4.0, -9.0, -6.5, -7.25], rc = [-3.5, -10.0, -2.5, -8.0], rr = [-3.5, -9.5, -6.0, -6.0];
        var expected = Enumerable.Range(0, pc.Length).Select(i =>
        {
            double h = (pc[i] - pr[i]) - (rc[i] - rr[i]);
            return type switch
            {
                DpoLossType.Sigmoid => -(1 - epsilon) * LogSigmoid(beta * h) - epsilon * LogSigmoid(-beta * h),
                DpoLossType.Robust => (-(1 - epsilon) * LogSigmoid(beta * h) + epsilon * LogSigmoid(-beta * h)) / (1 - 2 * epsilon),
                DpoLossType.Hinge => Math.Max(0, 1 - beta * h),
                DpoLossType.Ipo => Math.Pow(h - 1 / (2 * beta), 2),
                _ => throw new ArgumentOutOfRangeException(nameof(type)),
            };
        }).ToArray();
        Tensor T(double[] v) => tensor(v.Select(x => (float)x).ToArray());
        var actual = DpoTrainer.Losses(T(pc), T(pr), T(rc), T(rr), new DpoOptions { LossType = type, Beta = beta, LabelSmoothing = epsilon }).data<float>().ToArray();
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], actual[i], 4);
    }

    [Fact]
    public void ResponseLogProbsAreTheSumsOverTheResponseTokensWhateverTheBatchsPadding()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), seed: 4);
        model.eval();
        var pairs = PreferencePairs.FromExamples([([1, 5, 6], [7, 8, 9, 10], [11], 0f), ([1, 12], [13, 14], [15, 16, 17, 18, 19], 0f)], maxLength: 16);
        // The expected values: one unpadded forward pass per side, log-softmax at each position before a response token.
        double Expected(IReadOnlyList<int> ids, int promptLength, bool average)
        {
            using var scope = NewDisposeScope();
            var logits = model.Forward(tensor(ids.Select(i => (long)i).ToArray()).unsqueeze(0))[0].log_softmax(-1);
            var terms = Enumerable.Range(promptLength, ids.Count - promptLength).Select(t => (double)logits[t - 1, ids[t]].item<float>()).ToList();
            return average ? terms.Average() : terms.Sum();
        }
        foreach (bool average in new[] { false, true })
        {
            var (chosen, rejected, chosenNll) = DpoTrainer.ResponseLogProbs(model, pairs.Pairs, average);
            for (int i = 0; i < pairs.Count; i++)
            {
                var p = pairs.Pairs[i];
                Assert.Equal(Expected(p.Chosen, p.ChosenPromptLength, average), chosen[i].item<float>(), 4);
                Assert.Equal(Expected(p.Rejected, p.RejectedPromptLength, average), rejected[i].item<float>(), 4);
            }
            // RPO's term: the mean negative log-likelihood per chosen-response token (4 + 2 tokens here).
            double sum = -pairs.Pairs.Sum(p => Expected(p.Chosen, p.ChosenPromptLength, average: false));
            Assert.Equal(sum / 6, chosenNll.item<float>(), 4);
        }
        Assert.Equal(3, pairs.Pairs[0].ChosenPromptLength);
        Assert.Equal(2, pairs.Pairs[1].RejectedPromptLength);
    }

    /// <summary>Pairs whose chosen response is the prompt's first token repeated, the rejected one token 20 repeated (same lengths).</summary>
    private static PreferencePairs Preferences(int count, int seed)
    {
        var random = new Random(seed);
        return PreferencePairs.FromExamples(Enumerable.Range(0, count).Select(_ =>
        {
            var prompt = Enumerable.Range(0, random.Next(2, 5)).Select(_ => random.Next(40, 90)).ToList();
            int length = random.Next(2, 5);
            var chosen = Enumerable.Repeat(prompt[0], length).ToList();
            var rejected = Enumerable.Repeat(20, length).ToList();
            return ((IReadOnlyList<int>)prompt, (IReadOnlyList<int>)chosen, (IReadOnlyList<int>)rejected, 0f);
        }).ToList(), maxLength: 16);
    }

    private static TrainingOptions Options(int steps = 40, double lr = 1e-2) =>
        new() { MaxSteps = steps, BatchSize = 8, LearningRate = lr, WarmupSteps = 4, WeightDecay = 0, Seed = 5 };

    [Theory]
    [InlineData("lora")]
    [InlineData("prefix")]
    [InlineData("layernorm")]
    public void TheReferenceIsTheBaseModelWithTheAdapterDisabled(string method)
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        using var policy = TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), seed: 2);
        var pairs = Preferences(24, 1);
        using var untouched = TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), seed: 2);
        untouched.eval();
        float[] baseChosen, baseRejected;
        using (var _ = no_grad())
        {
            var (c, r, _) = DpoTrainer.ResponseLogProbs(untouched, pairs.Pairs);
            (baseChosen, baseRejected) = (c.data<float>().ToArray(), r.data<float>().ToArray());
        }

        using PeftModel adapter = method switch
        {
            "lora" => LoraModel.Apply(policy, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["q_proj", "v_proj"] }, seed: 1),
            "prefix" => PrefixTuningModel.Apply(policy, new PrefixTuningConfig { NumVirtualTokens = 4, PrefixProjection = false }, seed: 1),
            _ => SelectiveModel.Apply(policy, new SelectiveConfig { Tuning = SelectiveTuning.LayerNorm }),
        };
        var trainer = new DpoTrainer(policy, Options(steps: 15), adapter: adapter);
        var before = trainer.Evaluate(pairs);
        trainer.Train(pairs);
        var after = trainer.Evaluate(pairs);
        var reference = trainer.ReferenceLogProbs(pairs);
        for (int i = 0; i < pairs.Count; i++)
        {
            Assert.Equal(baseChosen[i], reference[0][i], 4);
            Assert.Equal(baseRejected[i], reference[1][i], 4);
        }
        output.WriteLine($"{method}: margin {before.RewardsMargin:F4} -> {after.RewardsMargin:F4}, accuracy {before.RewardsAccuracy:P0} -> {after.RewardsAccuracy:P0}");
        // The policy moved away from the reference (its own log-probabilities are no longer the base model's), towards chosen.
        Assert.True(after.RewardsMargin > before.RewardsMargin + 0.01, $"margin {before.RewardsMargin} -> {after.RewardsMargin}");
        Assert.True(Math.Abs(after.LogpsChosen - baseChosen.Average()) > 1e-3);
    }

    [Theory]
    [InlineData(DpoLossType.Sigmoid, false)]
    [InlineData(DpoLossType.Sigmoid, true)]
    [InlineData(DpoLossType.Ipo, false)]
    [InlineData(DpoLossType.Hinge, false)]
    [InlineData(DpoLossType.Robust, false)]
    public void DpoRaisesTheImplicitRewardAccuracyOnHeldOutPairs(DpoLossType type, bool full)
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        using var policy = TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), seed: 2);
        using var reference = full ? TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), seed: 2) : null;
        using var adapter = full ? null : LoraModel.Apply(policy, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = ["q_proj", "k_proj", "v_proj", "o_proj"] }, seed: 1);
        var dpo = new DpoOptions { LossType = type, LabelSmoothing = type == DpoLossType.Robust ? 0.1 : 0, Beta = type == DpoLossType.Ipo ? 0.5 : 0.1 };
        var trainer = new DpoTrainer(policy, Options(steps: 40, lr: full ? 3e-3 : 1e-2), dpo, adapter, reference);
        var heldOut = Preferences(64, 2);
        var before = trainer.Evaluate(heldOut);
        var metrics = new List<IReadOnlyDictionary<string, double>>();
        var result = trainer.Train(Preferences(256, 1), heldOut, new SynchronousProgress<TrainingProgress>(p => metrics.Add(p.Metrics!)));
        var after = trainer.Evaluate(heldOut);
        output.WriteLine($"{type} full={full}: held-out loss {before.Loss:F4} -> {after.Loss:F4}, accuracy {before.RewardsAccuracy:P0} -> {after.RewardsAccuracy:P0}, " +
            $"margin {before.RewardsMargin:F3} -> {after.RewardsMargin:F3}, chosen {after.RewardsChosen:F3}, rejected {after.RewardsRejected:F3}");
        Assert.Equal(0, before.RewardsMargin, 5);   // the policy starts as the reference
        Assert.True(after.RewardsAccuracy >= 0.9, $"accuracy {after.RewardsAccuracy:P0}");
        Assert.True(after.RewardsMargin > 0.1, $"margin {after.RewardsMargin}");
        Assert.True(after.Loss < before.Loss, $"loss {before.Loss} -> {after.Loss}");
        Assert.Equal(after.Loss, result.ValidationLoss!.Value, 4);
        Assert.Equal(40, metrics.Count);
        Assert.All(new[] { "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected" },
            key => Assert.True(metrics[^1].ContainsKey(key), key));
    }

    [Fact]
    public void PrecomputedReferenceLogProbsTrainAsTheOnTheFlyOnes()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        var pairs = Preferences(64, 1);
        IReadOnlyList<double> Run(bool precompute)
        {
            using var scope = NewDisposeScope();
            using var policy = TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), seed: 2);
            using var adapter = LoraModel.Apply(policy, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["q_proj", "v_proj"] }, seed: 1);
            return new DpoTrainer(policy, Options(steps: 12), new DpoOptions { PrecomputeReferenceLogProbs = precompute, RpoAlpha = 1.0 }, adapter)
                .Train(pairs).LossHistory;
        }
        var onTheFly = Run(false);
        var precomputed = Run(true);
        for (int i = 0; i < onTheFly.Count; i++) Assert.Equal(onTheFly[i], precomputed[i], 4);
        Assert.True(onTheFly[^1] < onTheFly[0]);
    }

    [Fact]
    public void BadReferencesAndOptionsAreRefused()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        using var policy = new LlamaForCausalLM(TinyModels.Llama());
        using var other = new LlamaForCausalLM(TinyModels.Llama());
        using var adapter = LoraModel.Apply(policy, new LoraConfig { R = 2, TargetModules = ["q_proj"] });
        Assert.Contains("one reference", Assert.Throws<ArgumentException>(() => new DpoTrainer(policy, Options())).Message);
        Assert.Contains("one reference", Assert.Throws<ArgumentException>(() => new DpoTrainer(policy, Options(), adapter: adapter, referenceModel: other)).Message);
        Assert.Contains("policy itself", Assert.Throws<ArgumentException>(() => new DpoTrainer(policy, Options(), referenceModel: policy)).Message);
        Assert.Contains("another model", Assert.Throws<ArgumentException>(() => new DpoTrainer(other, Options(), adapter: adapter)).Message);
        Assert.Contains("LabelSmoothing", Assert.Throws<ArgumentException>(() =>
            new DpoTrainer(policy, Options(), new DpoOptions { LossType = DpoLossType.Hinge, LabelSmoothing = 0.1 }, adapter)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new DpoTrainer(policy, Options(), new DpoOptions { Beta = 0 }, adapter));
        // A side whose every token is prompt-less and single has nothing to score.
        var empty = PreferencePairs.FromExamples([([], [7], [8, 9], 0f)], maxLength: 8);
        Assert.Contains("BOS", Assert.Throws<ArgumentException>(() => DpoTrainer.ResponseLogProbs(policy, empty.Pairs)).Message);
    }

    [Fact]
    public void TheImplicitRewardIsBetaTimesTheLogRatioOfPolicyOverReferenceOnTheResponseAndEos()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        var tokenizer = TinyTokenizer.Create();
        int eos = tokenizer.EosId!.Value;
        var config = TinyModels.Llama();
        config.VocabSize = TinyTokenizer.VocabSize;
        using var policy = TinyModels.Randomize(new LlamaForCausalLM(config), seed: 3);
        using var adapter = LoraModel.Apply(policy, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["q_proj", "v_proj", "down_proj"] }, seed: 1);
        string[] prompts = ["Which town?", "Q: 2+2=", "Name it."];
        string[] responses = [" Tolvan", " 4", " a long answer of many tokens"];
        const double beta = 0.25;
        var reward = new ImplicitReward(policy, tokenizer, beta, adapter, batchSize: 2);   // two batches, each right-padded

        // A fresh LoRA (B = 0) is the reference: every reward is 0.
        Assert.All(reward.Score(prompts, responses), r => Assert.Equal(0f, r));

        using (no_grad())
            foreach (var (name, p) in policy.named_parameters().Where(x => x.name.Contains("lora_B"))) p.normal_(0, 0.3);
        policy.train();
        double LogProb(int row)
        {
            using var scope = NewDisposeScope();
            int[] prompt = [.. tokenizer.Encode(prompts[row])];
            int[] ids = [.. prompt, .. tokenizer.Encode(responses[row], addSpecialTokens: false), eos];
            var logits = policy.Forward(tensor(ids.Select(i => (long)i).ToArray()).unsqueeze(0))[0].log_softmax(-1);
            return Enumerable.Range(prompt.Length, ids.Length - prompt.Length).Sum(t => (double)logits[t - 1, ids[t]].item<float>());
        }
        double[] expected;
        policy.eval();
        using (no_grad())
        {
            var tuned = Enumerable.Range(0, prompts.Length).Select(LogProb).ToArray();
            using (adapter.DisableAdapters()) expected = Enumerable.Range(0, prompts.Length).Select(i => beta * (tuned[i] - LogProb(i))).ToArray();
        }
        policy.train();
        var actual = reward.Score(prompts, responses);
        output.WriteLine($"implicit rewards {string.Join(", ", actual.Select(a => a.ToString("F4")))}");
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], actual[i], 3);
        Assert.Contains(actual, a => Math.Abs(a) > 0.01);   // the adapter moved them, so the comparison above is not 0 = 0
        Assert.True(policy.training, "scoring left the policy in eval mode");
        Assert.Throws<ArgumentException>(() => reward.Score(prompts, responses.Take(2).ToList()));
        Assert.Contains("one reference", Assert.Throws<ArgumentException>(() => new ImplicitReward(policy, tokenizer)).Message);
    }
}
