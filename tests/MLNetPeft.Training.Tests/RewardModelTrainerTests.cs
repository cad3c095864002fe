using MLNetPeft.Architectures;
using MLNetPeft.Training.RewardModeling;
using MLNetPeft.Tuners;
using MLNetPeft.Tuners.Lora;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Tests;

public class RewardModelTrainerTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public void ThePairwiseLossIsTrlsWithMarginAndCentring()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        double[] c = [1.0, -0.5, 2.0, 0.1], r = [0.2, 0.3, 2.5, 0.1], m = [0.5, 0, 1, 0.25];
        static double LogSigmoid(double x) => -Math.Log(1 + Math.Exp(-x));
        double plain = -c.Zip(r).Average(p => LogSigmoid(p.First - p.Second));
        double withMargin = -Enumerable.Range(0, c.Length).Average(i => LogSigmoid(c[i] - r[i] - m[i]));
        double centring = 0.01 * c.Zip(r).Average(p => (p.First + p.Second) * (p.First + p.Second));
        Tensor T(double[] v) => tensor(v.Select(x => (float)x).ToArray());
        Assert.Equal(plain, RewardModelTrainer.PairwiseLoss(T(c), T(r)).item<float>(), 5);
        Assert.Equal(withMargin, RewardModelTrainer.PairwiseLoss(T(c), T(r), T(m)).item<float>(), 5);
        Assert.Equal(withMargin + centring, RewardModelTrainer.PairwiseLoss(T(c), T(r), T(m), 0.01).item<float>(), 5);
    }

    [Fact]
    public void APairThatIsTooLongKeepsItsResponseAndLosesTheStartOfItsPrompt()
    {
        int[] prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        var pairs = PreferencePairs.FromExamples([(prompt, [20, 21, 22], [30], 0.5f), ([1, 2], [40], [41], 0f)], maxLength: 6);
        Assert.Equal([8, 9, 10, 20, 21, 22], pairs.Pairs[0].Chosen);
        Assert.Equal([6, 7, 8, 9, 10, 30], pairs.Pairs[0].Rejected);
        Assert.Equal(0.5f, pairs.Pairs[0].Margin);
        Assert.Equal([1, 2, 40], pairs.Pairs[1].Chosen);
        Assert.Equal(1, pairs.Truncated);
        // A response longer than the limit keeps its first tokens and no prompt.
        Assert.Equal([50, 51, 52], PreferencePairs.FromExamples([(prompt, [50, 51, 52, 53], [60], 0f)], maxLength: 3).Pairs[0].Chosen);
        Assert.Contains("chosen", Assert.Throws<ArgumentException>(() => PreferencePairs.FromExamples([(prompt, [], [60], 0f)], 6)).Message);
        Assert.Throws<ArgumentException>(() => PreferencePairs.FromExamples([], 6));
    }

    /// <summary>
    /// Pairs whose chosen response holds token 10 and whose rejected response, of the same length, holds token 20
    /// somewhere among random tokens: what a reward model must find is which token, not where or how long.
    /// </summary>
    private static PreferencePairs Preferences(int count, int seed)
    {
        var random = new Random(seed);
        List<int> Random(int length) => Enumerable.Range(0, length).Select(_ => random.Next(40, 89)).ToList();
        return PreferencePairs.FromExamples(Enumerable.Range(0, count).Select(_ =>
        {
            var prompt = Random(random.Next(3, 7));
            int length = random.Next(2, 6);
            var chosen = Random(length);
            chosen.Insert(random.Next(length + 1), 10);
            var rejected = Random(length);
            rejected.Insert(random.Next(length + 1), 20);
            return ((IReadOnlyList<int>)prompt, (IReadOnlyList<int>)chosen, (IReadOnlyList<int>)rejected, 0f);
        }).ToList(), maxLength: 32);
    }

    [Theory]
    [InlineData("llama", false)]
    [InlineData("llama", true)]
    [InlineData("bert", true)]
    public void ARewardModelLearnsWhichResponseIsPreferredWithFullFineTuningOrLora(string family, bool lora)
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        using SequenceClassificationModel model = family == "bert"
            ? new BertForSequenceClassification(new BertModel(TinyModels.Bert(), addPoolingLayer: true), numLabels: 1, SequencePooling.Cls, seed: 1)
            : new CausalLmForSequenceClassification(new LlamaForCausalLM(TinyModels.Llama()), numLabels: 1, padTokenId: 0, seed: 1);
        string head = family == "bert" ? "classifier" : "score";
        using var adapter = lora
            ? LoraModel.Apply(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = family == "bert" ? ["query", "value"] : ["q_proj", "v_proj"] }, seed: 1)
            : null;
        adapter?.SaveModulesWhole(head);   // the head trains in full and is saved whole (PEFT's modules_to_save)
        var train = Preferences(200, 1);
        var heldOut = Preferences(100, 2);
        var before = RewardModelTrainer.Evaluate(model, heldOut);
        var options = new TrainingOptions { MaxSteps = 60, BatchSize = 8, LearningRate = lora ? 1e-2 : 3e-3, WarmupSteps = 5, WeightDecay = 0, Seed = 3 };
        var result = new RewardModelTrainer(model, options, centerRewardsCoefficient: 0.01).Train(train, heldOut);
        var after = RewardModelTrainer.Evaluate(model, heldOut, centerRewardsCoefficient: 0.01);
        output.WriteLine($"{family} lora={lora}: held-out accuracy {before.Accuracy:P0} -> {after.Accuracy:P0}, loss {before.Loss:F4} -> {after.Loss:F5}, margin {after.MeanMargin:F2}, rewards {after.RewardMean:F2} ± {after.RewardStd:F2}");
        Assert.True(after.Accuracy >= 0.9, $"accuracy {before.Accuracy:P0} -> {after.Accuracy:P0}");
        Assert.True(after.Loss < before.Loss * 0.5, $"loss {before.Loss:F3} -> {after.Loss:F3}");
        Assert.True(after.MeanMargin > 0);
        Assert.Equal(after.Loss, result.ValidationLoss!.Value, 4);
        if (adapter is null) return;

        // The adapter file holds the trained head whole, under PEFT's modules_to_save key, and names it in its config.
        var folder = Directory.CreateTempSubdirectory("reward-adapter").FullName;
        try
        {
            PeftAdapterFiles.Save(folder, adapter, taskType: "SEQ_CLS");
            using var file = MLNetPeft.Checkpoints.SafetensorsFile.Open(Path.Combine(folder, "adapter_model.safetensors"));
            Assert.Contains($"base_model.model.{head}.weight", file.TensorNames);
            Assert.Contains($"\"{head}\"", File.ReadAllText(Path.Combine(folder, "adapter_config.json")));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void AModelWithMoreThanOneLabelIsRefused()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = new CausalLmForSequenceClassification(new LlamaForCausalLM(TinyModels.Llama()), numLabels: 2);
        Assert.Contains("num_labels = 1", Assert.Throws<ArgumentException>(() => new RewardModelTrainer(model, new TrainingOptions())).Message);
    }
}
