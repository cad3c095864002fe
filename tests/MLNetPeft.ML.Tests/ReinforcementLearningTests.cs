using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.ML.Generation;
using MLNetPeft.BaseModel;
using MLNetPeft.Generation;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Reinforcement;
using MLNetPeft.ML.RewardModeling;
using MLNetPeft.Training;
using MLNetPeft.Training.Grpo;
using MLNetPeft.Training.Ppo;
using MLNetPeft.Training.Reinforcement;
using MLNetPeft.Tuners.Lora;

namespace MLNetPeft.ML.Tests;

/// <summary>PPO and GRPO as ML.NET estimators on the bundled base model, with a verifiable reward: the sum of two numbers.</summary>
public class ReinforcementLearningTests(Xunit.Abstractions.ITestOutputHelper output)
{
    public sealed class SumRow
    {
        public string Prompt { get; set; } = "";
        public string Answer { get; set; } = "";
    }

    private static SumRow[] Sums(int count, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => (A: random.Next(50), B: random.Next(50)))
            .Select(x => new SumRow { Prompt = $"{x.A} plus {x.B} is", Answer = (x.A + x.B).ToString() }).ToArray();
    }

    /// <summary>1 when the response's first number is the row's Answer column.</summary>
    private static readonly RlReward RightSum = RlReward.FromRow((_, response, columns) =>
        new string(response.TrimStart().TakeWhile(char.IsAsciiDigit).ToArray()) == columns["Answer"] ? 1f : 0f, ["Answer"], name: "sum");

    private static readonly GenerationOptions Greedy = new() { MaxNewTokens = 4, StopStrings = ["."] };
    private static readonly SamplingOptions Sampling = new() { Temperature = 1.0, MaxNewTokens = 4, StopStrings = ["."] };
    private static readonly LoraConfig Lora = new() { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] };

    private static TrainingOptions Loop(int steps, int batch) =>
        new() { MaxSteps = steps, BatchSize = batch, LearningRate = 3e-3, WarmupSteps = 2, WeightDecay = 0, Seed = 1 };

    private static double Accuracy(ITransformer generator, IDataView view, SumRow[] rows) =>
        generator.Transform(view).GetColumn<string>("GeneratedText").Zip(rows).Count(x => x.First.Trim() == x.Second.Answer) / (double)rows.Length;

    [Fact]
    public void GrpoLearnsTheSumsOfItsPromptsAndTheTunedModelSavesAndLoads()
    {
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        var rows = Sums(12, seed: 3);
        var view = ml.Data.LoadFromEnumerable(rows);
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        using var untouched = ml.Transforms.Text.GenerateText(model, tokenizer, options: Greedy).Fit(view);
        double before = Accuracy(untouched, view, rows);
        var metrics = new List<IReadOnlyDictionary<string, double>>();
        var options = new CausalLmGrpoOptions
        {
            Rewards = [RightSum], Lora = Lora, Seed = 1, Generation = Greedy, Training = Loop(steps: 50, batch: 16),
            Grpo = new GrpoOptions { NumGenerations = 8, Sampling = Sampling },
            Progress = new SynchronousProgress<TrainingProgress>(p => metrics.Add(p.Metrics!)),
        };
        using var tuned = ml.Transforms.Text.TrainGrpo(model, tokenizer, options).Fit(view);
        double after = Accuracy(tuned, view, rows);
        double firstReward = metrics.Take(10).Average(m => m["reward"]), lastReward = metrics.TakeLast(10).Average(m => m["reward"]);
        output.WriteLine($"greedy sums right on the training prompts {before:P0} -> {after:P0}; reward {firstReward:F3} -> {lastReward:F3}");
        Assert.Equal(50, metrics.Count);
        Assert.True(lastReward > firstReward + 0.2, $"reward {firstReward:F3} -> {lastReward:F3}");
        Assert.True(after >= before + 0.3, $"greedy accuracy {before:P0} -> {after:P0}");

        var path = dir.File("grpo.zip");
        ml.Model.Save(tuned, view.Schema, path);
        using var loaded = (IDisposable)ml.Model.Load(path, out _);
        Assert.Equal(tuned.Transform(view).GetColumn<string>("GeneratedText").ToArray(),
            ((ITransformer)loaded).Transform(view).GetColumn<string>("GeneratedText").ToArray());
    }

    private static CausalLmPpoOptions PpoOptions(int steps, RlReward reward) => new()
    {
        Reward = reward, Lora = Lora, Seed = 1, Generation = Greedy, Training = Loop(steps, batch: 8),
        Ppo = new PpoOptions { NumPpoEpochs = 2, NumMiniBatches = 2, Sampling = Sampling },
    };

    [Fact]
    public void PpoRaisesTheScoreWithTheKlBoundedAndResumesAfterCancellation()
    {
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        var rows = Sums(12, seed: 3);
        var view = ml.Data.LoadFromEnumerable(rows);
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        var metrics = new List<IReadOnlyDictionary<string, double>>();
        var options = PpoOptions(steps: 80, RightSum);
        options.Progress = new SynchronousProgress<TrainingProgress>(p => metrics.Add(p.Metrics!));
        using var tuned = ml.Transforms.Text.TrainPpo(model, tokenizer, options).Fit(view);
        double first = metrics.Take(12).Average(m => m["objective/scores"]), last = metrics.TakeLast(12).Average(m => m["objective/scores"]);
        double kl = metrics.TakeLast(12).Max(m => m["objective/kl"]);
        output.WriteLine($"PPO scores {first:F3} -> {last:F3}, KL at the end {kl:F3}, greedy right {Accuracy(tuned, view, rows):P0}");
        Assert.True(last > first + 0.15, $"scores {first:F3} -> {last:F3}");
        Assert.True(kl < 5, $"KL {kl:F3}");

        // Cancelled mid-run, the fit leaves a checkpoint; fitting again resumes from it and finishes.
        using var cts = new CancellationTokenSource();
        var resumable = PpoOptions(steps: 6, RightSum);
        resumable.Training.CheckpointFolder = dir.File("run");
        resumable.CancellationToken = cts.Token;
        resumable.Progress = new SynchronousProgress<TrainingProgress>(p => { if (p.Step == 3) cts.Cancel(); });
        Assert.ThrowsAny<OperationCanceledException>(() => ml.Transforms.Text.TrainPpo(model, tokenizer, resumable).Fit(view));
        Assert.EndsWith("checkpoint-000003", Trainer.LatestCheckpoint(dir.File("run")));
        var steps = new List<int>();
        resumable.CancellationToken = default;
        resumable.Progress = new SynchronousProgress<TrainingProgress>(p => steps.Add(p.Step));
        using var resumed = ml.Transforms.Text.TrainPpo(model, tokenizer, resumable).Fit(view);
        Assert.Equal([4, 5, 6], steps);
    }

    [Fact]
    public void BadRlInputIsNamedAtFit()
    {
        var ml = new MLContext(seed: 1);
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        var rows = Sums(4, seed: 1);
        var view = ml.Data.LoadFromEnumerable(rows);
        var noPrompt = ml.Data.LoadFromEnumerable(rows.Select(r => new { Question = r.Prompt, r.Answer }));
        Assert.Contains("Prompt", Assert.ThrowsAny<Exception>(() => ml.Transforms.Text.TrainGrpo(model, tokenizer,
            new CausalLmGrpoOptions { Rewards = [RightSum], Training = Loop(1, 8), Grpo = new() { NumGenerations = 4 } }).Fit(noPrompt)).Message);
        var noAnswer = ml.Data.LoadFromEnumerable(rows.Select(r => new { r.Prompt }));
        Assert.Contains("Answer", Assert.ThrowsAny<Exception>(() => ml.Transforms.Text.TrainPpo(model, tokenizer, PpoOptions(1, RightSum)).Fit(noAnswer)).Message);

        // A reward that returns NaN names the row of the rollout and its prompt.
        var nan = RlReward.From((prompt, _) => prompt.StartsWith(rows[2].Prompt, StringComparison.Ordinal) ? float.NaN : 0f);
        var named = ExceptionChain.Find<InvalidOperationException>(() => ml.Transforms.Text.TrainPpo(model, tokenizer, PpoOptions(2, nan)).Fit(view));
        Assert.Contains("NaN", named.Message);
        Assert.Contains(rows[2].Prompt, named.Message);

        // A prompt repeated with another expected answer is ambiguous for a reward that sees the prompt.
        var clash = ml.Data.LoadFromEnumerable(new[] { new SumRow { Prompt = "1 plus 1 is", Answer = "2" }, new SumRow { Prompt = "1 plus 1 is", Answer = "3" } });
        Assert.Contains("Rows 0 and 1", Assert.Throws<InvalidOperationException>(() =>
            ml.Transforms.Text.TrainGrpo(model, tokenizer, new CausalLmGrpoOptions { Rewards = [RightSum], Training = Loop(1, 8), Grpo = new() { NumGenerations = 4 } }).Fit(clash)).Message);

        Assert.Contains("multiple of Grpo.NumGenerations", Assert.Throws<ArgumentException>(() =>
            ml.Transforms.Text.TrainGrpo(model, tokenizer, new CausalLmGrpoOptions { Rewards = [RightSum], Training = Loop(1, 6) })).Message);
        Assert.Contains("needs a Reward", Assert.Throws<ArgumentException>(() => ml.Transforms.Text.TrainPpo(model, tokenizer, new CausalLmPpoOptions())).Message);
        var fromRule = PpoOptions(1, RightSum);
        fromRule.ValueModel = ValueModelInit.FromRewardModel;
        Assert.Contains("reward-model transformer", Assert.Throws<ArgumentException>(() => ml.Transforms.Text.TrainPpo(model, tokenizer, fromRule)).Message);
        using var noEos = new TempFolder();
        Assert.Contains("end-of-sequence", Assert.Throws<ArgumentException>(() =>
            ml.Transforms.Text.TrainGrpo(model, TokenizerWithoutEos(noEos), new CausalLmGrpoOptions { Rewards = [RightSum], Training = Loop(1, 8) })).Message);
    }

    /// <summary>The bundled tokenizer's files with the eos token removed from its config.</summary>
    private static Tokenization.TextTokenizer TokenizerWithoutEos(TempFolder dir)
    {
        foreach (var file in new[] { "vocab.json", "merges.txt" }) File.Copy(Path.Combine(BundledBaseModel.Folder, file), dir.File(file));
        File.WriteAllText(dir.File("tokenizer_config.json"), "{}");
        return Tokenization.TextTokenizer.FromPretrained(dir.Path);
    }
}
