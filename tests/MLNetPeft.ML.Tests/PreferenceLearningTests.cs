using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Tasks;
using MLNetPeft.Generation;
using MLNetPeft.ML.Dpo;
using MLNetPeft.ML.Evaluation;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Preferences;
using MLNetPeft.ML.RewardModeling;
using MLNetPeft.Training;
using MLNetPeft.Tuners.Lora;

namespace MLNetPeft.ML.Tests;

/// <summary>Reward models and DPO as ML.NET estimators, on preference pairs of the bundled base model's world.</summary>
public class PreferenceLearningTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>A preference row whose prompt column is "Text", so the fresh-process helper's rows (Text, Response) can be scored.</summary>
    public sealed class Pair
    {
        public string Text { get; set; } = "";
        public string Chosen { get; set; } = "";
        public string Rejected { get; set; } = "";
    }

    private static Pair[] Pairs(bool heldOut, int seed)
    {
        var world = BaseModelRecipe.World();
        var people = heldOut ? InstructionTasks.HeldOutSet(world) : InstructionTasks.TrainingSet(world);
        return InstructionTasks.GeneratePreferences(people, 1, seed).Select(p => new Pair { Text = p.Prompt, Chosen = p.Chosen, Rejected = p.Rejected }).ToArray();
    }

    private static RewardModelOptions RewardOptions(int steps) => new()
    {
        PromptColumnName = "Text", MaxLength = 64, Seed = 1,
        Lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] },
        Training = new TrainingOptions { MaxSteps = steps, BatchSize = 8, LearningRate = 3e-3, WarmupSteps = 5, WeightDecay = 0, Seed = 1 },
    };

    public sealed class ScoreRow
    {
        public float Score { get; set; }
    }

    [Fact]
    public async Task ARewardModelOnTheBundledModelPrefersTheRightFactAndScoresTheSameInAFreshProcess()
    {
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        var train = ml.Data.LoadFromEnumerable(Pairs(heldOut: false, seed: 1));
        var heldOutPairs = Pairs(heldOut: true, seed: 2);
        var heldOut = ml.Data.LoadFromEnumerable(heldOutPairs);
        using var model = BundledBaseModel.Load();
        using var rewardModel = ml.Transforms.Text.TrainRewardModel(model, BundledBaseModel.LoadTokenizer(), RewardOptions(steps: 80)).Fit(train);
        var metrics = rewardModel.Evaluate(heldOut);
        output.WriteLine($"held-out pairwise accuracy {metrics.Accuracy:P1} over {metrics.Pairs} pairs, margin {metrics.MeanMargin:F2}, loss {metrics.Loss:F4}, " +
            $"rewards {metrics.RewardMean:F2} ± {metrics.RewardStd:F2}, {rewardModel.TrainedParameters:N0} parameters trained");
        // An untrained head ranks about half the pairs right; the target of 95 % is not reached yet (79 % measured).
        Assert.True(metrics.Accuracy >= 0.7, $"held-out accuracy {metrics.Accuracy:P1}");

        // Score (prompt + response), in this process, through a PredictionEngine and in a process that only loads the zip.
        var rows = heldOutPairs.Take(12).Select(p => new FreshProcess.Row(p.Text, p.Chosen)).ToList();
        var expected = FreshProcess.Columns(rewardModel.Transform(ml.Data.LoadFromEnumerable(rows)), ["Score"]);
        var engine = ml.Model.CreatePredictionEngine<FreshProcess.Row, ScoreRow>(rewardModel);
        Assert.Equal(rewardModel.Score([rows[0].Text], [rows[0].Response])[0], engine.Predict(rows[0]).Score);
        var path = dir.File("reward.zip");
        ml.Model.Save(rewardModel, heldOut.Schema, path);
        Assert.Equal(expected, await FreshProcess.RunAsync(path, rows, ["Score"], dir.Path));
    }

    [Theory]
    [InlineData(FineTuningMethod.Ia3, "model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight")]
    [InlineData(FineTuningMethod.LayerNorm, "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_proj.weight")]
    [InlineData(FineTuningMethod.Lora, "model.layers.0.self_attn.q_proj.weight", "model.layers.0.input_layernorm.weight")]
    public void OtherPeftMethodsTrainTheRewardModelsBackboneWhereTheyAct(FineTuningMethod method, string adapted, string untouched)
    {
        var ml = new MLContext(seed: 1);
        using var model = BundledBaseModel.Load();
        var options = RewardOptions(steps: 6);
        options.Method = method;
        options.Training.LearningRate = 2e-2;
        using var rewardModel = ml.Transforms.Text.TrainRewardModel(model, BundledBaseModel.LoadTokenizer(), options).Fit(ml.Data.LoadFromEnumerable(Pairs(heldOut: false, seed: 1)));
        // The tuned weights (merged into the backbone) moved where the method acts and nowhere else; the head trains besides.
        using var scope = TorchSharp.torch.NewDisposeScope();
        var before = model.state_dict();
        var after = rewardModel.Model.state_dict();
        double Change(string name) => (after[name] - before[name]).abs().max().item<float>();
        output.WriteLine($"{method}: max change {Change(adapted):E2} in {adapted}, {Change(untouched):E2} in {untouched}; {rewardModel.TrainedParameters:N0} parameters trained");
        Assert.True(Change(adapted) > 1e-4, $"{adapted} did not move");
        Assert.Equal(0, Change(untouched));
        Assert.True(rewardModel.TrainedParameters > ((MLNetPeft.Architectures.LlamaConfig)model.Config).HiddenSize, "only the head trained");
    }

    [Fact]
    public void BadPreferenceInputIsNamedAtFit()
    {
        var ml = new MLContext(seed: 1);
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        var estimator = ml.Transforms.Text.TrainRewardModel(model, tokenizer, RewardOptions(steps: 1));
        var noRejected = ml.Data.LoadFromEnumerable(new[] { new { Text = "a", Chosen = "b" } });
        Assert.Contains("Rejected", Assert.ThrowsAny<Exception>(() => estimator.Fit(noRejected)).Message);
        var numeric = ml.Data.LoadFromEnumerable(new[] { new { Text = "a", Chosen = "b", Rejected = 1f } });
        Assert.Contains("Rejected", Assert.ThrowsAny<Exception>(() => estimator.Fit(numeric)).Message);
        // Empty rows and rows whose chosen equals rejected are skipped (or fail the fit when asked); none left is an error.
        var useless = ml.Data.LoadFromEnumerable(new[] { new Pair { Text = "q", Chosen = " same", Rejected = " same" }, new Pair { Text = "q", Chosen = "", Rejected = " x" } });
        Assert.Contains("identical: 1", Assert.Throws<ArgumentException>(() => estimator.Fit(useless)).Message);
        var failing = RewardOptions(steps: 1);
        failing.EmptyRows = BadRowHandling.Fail;
        Assert.Contains("same Chosen and Rejected", Assert.Throws<InvalidOperationException>(() =>
            ml.Transforms.Text.TrainRewardModel(model, tokenizer, failing).Fit(useless)).Message);
        Assert.Equal("Beta", Assert.Throws<ArgumentOutOfRangeException>(() =>
            ml.Transforms.Text.TrainDpo(model, tokenizer, new CausalLmDpoOptions { Dpo = new() { Beta = -1 } })).ParamName);
    }

    private static CausalLmDpoOptions DpoOptions(int steps) => new()
    {
        PromptColumnName = "Text", MaxLength = 64, Seed = 1, Generation = new GenerationOptions { MaxNewTokens = 6, StopStrings = ["\n"] },
        Lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] },
        Training = new TrainingOptions { MaxSteps = steps, BatchSize = 8, LearningRate = 3e-3, WarmupSteps = 5, WeightDecay = 0, Seed = 1 },
    };

    [Fact]
    public async Task DpoThroughTheEstimatorRaisesTheImplicitRewardAccuracyAndTheRightAnswersAndReloadsInAFreshProcess()
    {
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        var train = ml.Data.LoadFromEnumerable(Pairs(heldOut: false, seed: 1));
        var heldOutPairs = Pairs(heldOut: true, seed: 2);
        var heldOut = ml.Data.LoadFromEnumerable(heldOutPairs);
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        double Matches(ITransformer generator) =>
            generator.Transform(heldOut).GetColumn<string>("GeneratedText").Zip(heldOutPairs).Count(x => x.First.Trim() == x.Second.Chosen.Trim()) / (double)heldOutPairs.Length;
        using var untouched = ml.Transforms.Text.GenerateText(model, tokenizer, inputColumnName: "Text", options: DpoOptions(1).Generation).Fit(heldOut);
        double before = Matches(untouched);
        var options = DpoOptions(steps: 60);
        options.Dpo.RpoAlpha = 1.0;   // RPO: DPO alone pushes the rejected answers down and drifts (its chosen log-probabilities fall too)
        using var tuned = ml.Transforms.Text.TrainDpo(model, tokenizer, options).Fit(train);
        var metrics = tuned.EvaluateDpo(model, tokenizer, heldOut, promptColumnName: "Text", maxLength: 64);
        double after = Matches(tuned);
        foreach (var (g, p) in tuned.Transform(heldOut).GetColumn<string>("GeneratedText").Zip(heldOutPairs).Take(3)) output.WriteLine($"[{g}] vs chosen [{p.Chosen}], rejected [{p.Rejected}]");
        output.WriteLine($"held-out implicit-reward accuracy {metrics.RewardsAccuracy:P1}, margin {metrics.RewardsMargin:F3} " +
            $"(chosen {metrics.RewardsChosen:F3}, rejected {metrics.RewardsRejected:F3}); greedy answer = chosen: {before:P1} -> {after:P1}");
        Assert.True(metrics.RewardsAccuracy >= 0.9, $"implicit-reward accuracy {metrics.RewardsAccuracy:P1}");
        Assert.True(metrics.RewardsMargin > 0);
        Assert.True(after >= 0.8 && after > before, $"greedy matches {before:P1} -> {after:P1}");
        // The tuned model as a reward model (its implicit reward through IRewardFunction, each side scored on its own)
        // ranks the held-out pairs as EvaluateDpo does.
        var asReward = tuned.AsImplicitReward(model, tokenizer, maxLength: 64).EvaluatePreferences(heldOut, promptColumnName: "Text");
        output.WriteLine($"implicit reward as a reward model: accuracy {asReward.Accuracy:P1}, mean margin {asReward.MeanMargin:F3}");
        Assert.InRange(asReward.Accuracy, metrics.RewardsAccuracy - 1.0 / heldOutPairs.Length, metrics.RewardsAccuracy + 1.0 / heldOutPairs.Length);
        Assert.Equal(metrics.RewardsMargin, asReward.MeanMargin, 2);

        // The tuned model generates the same answers in a process that only loads the zip.
        var rows = heldOutPairs.Take(12).Select(p => new FreshProcess.Row(p.Text, p.Chosen)).ToList();
        var expected = FreshProcess.Columns(tuned.Transform(ml.Data.LoadFromEnumerable(rows)), ["GeneratedText"]);
        var path = dir.File("dpo.zip");
        ml.Model.Save(tuned, heldOut.Schema, path);
        Assert.Equal(expected, await FreshProcess.RunAsync(path, rows, ["GeneratedText"], dir.Path));
    }

    [Fact]
    public void LlamaFactorysDpoDemoFileLoadsAndTrainsThroughTheDpoEstimator()
    {
        var rows = PreferenceFiles.ReadShareGpt(SharedData.Require("instruct/dpo_en_demo.json"));
        Assert.Equal(300, rows.Count);
        Assert.StartsWith("Human: ", rows[0].Prompt);
        Assert.EndsWith("\n\nAssistant:", rows[0].Prompt);
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(rows.Take(32));
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        var options = DpoOptions(steps: 4);
        options.PromptColumnName = "Prompt";
        options.MaxLength = 96;
        using var tuned = ml.Transforms.Text.TrainDpo(model, tokenizer, options).Fit(data);
        Assert.Single(tuned.Transform(ml.Data.LoadFromEnumerable(rows.Take(1))).GetColumn<string>("GeneratedText"));
        // A malformed file names itself and the entry.
        using var dir = new TempFolder();
        var bad = dir.File("bad.json");
        File.WriteAllText(bad, """[{"conversations":[{"from":"human","value":"hi"}],"chosen":{"from":"gpt","value":"a"}}]""");
        var error = Assert.Throws<InvalidDataException>(() => PreferenceFiles.ReadShareGpt(bad));
        Assert.Contains("entry 0", error.Message);
        Assert.Contains("'rejected'", error.Message);
    }
}
