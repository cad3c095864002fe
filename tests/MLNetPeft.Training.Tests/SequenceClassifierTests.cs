using MLNetPeft.Architectures;
using MLNetPeft.Training;
using MLNetPeft.Training.Classification;
using MLNetPeft.Tuners.Lora;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Tests;

public class SequenceClassifierTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>Class = which of three marker tokens (10, 20, 30) the random sequence contains; pairs put it in either segment.</summary>
    private static List<ClassificationExample> Task(int count, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(_ =>
        {
            int label = random.Next(3);
            var ids = Enumerable.Range(0, random.Next(4, 12)).Select(_ => random.Next(40, 89)).ToList();
            ids.Insert(random.Next(ids.Count), 10 * (label + 1));
            return new ClassificationExample(ids, ids.Select(_ => 0).ToList(), label);
        }).ToList();
    }

    [Theory]
    [InlineData(false, SequencePooling.Mean)]
    [InlineData(true, SequencePooling.Cls)]
    public void AClassifierLearnsAToyTaskWithFullFineTuningOrLora(bool lora, SequencePooling pooling)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var bert = new BertModel(TinyModels.Bert(), addPoolingLayer: pooling == SequencePooling.Cls);
        using var model = new BertForSequenceClassification(bert, 3, pooling, seed: 1);
        LoraModel? adapter = lora ? LoraModel.Apply(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["query", "value"] }, seed: 1) : null;
        if (adapter is not null) model.named_parameters().First(p => p.name == "classifier.weight").parameter.requires_grad = true;
        if (adapter is not null) model.named_parameters().First(p => p.name == "classifier.bias").parameter.requires_grad = true;
        var train = Task(240, 1);
        var test = Task(90, 2);
        var before = SequenceClassifierTrainer.Evaluate(model, test);
        var options = new TrainingOptions { MaxSteps = SequenceClassifierTrainer.StepsFor(train.Count, 16, lora ? 15 : 6), BatchSize = 16, LearningRate = lora ? 2e-2 : 2e-3, WarmupSteps = 5, WeightDecay = 0, Seed = 3 };
        new SequenceClassifierTrainer(model, options).Train(train);
        var after = SequenceClassifierTrainer.Evaluate(model, test);
        output.WriteLine($"lora={lora} {pooling}: accuracy {before.Accuracy:P0} -> {after.Accuracy:P0}, loss {before.Loss:F3} -> {after.Loss:F3}");
        Assert.True(after.Accuracy > 0.8, $"accuracy {before.Accuracy:P0} -> {after.Accuracy:P0}");
        Assert.True(after.Loss < before.Loss);
        var probabilities = SequenceClassifierTrainer.Predict(model, test.Take(3).ToList());
        Assert.All(probabilities, p => Assert.Equal(1.0, p.Sum(), 4));
        adapter?.Dispose();
    }

    [Fact]
    public void TheSameSeedTrainsTheSameClassifierEvenWithAnotherThreadDrawingRandomNumbers()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        BertForSequenceClassification Train(bool crowded)
        {
            var config = TinyModels.Bert();
            config.HiddenDropoutProb = config.AttentionProbsDropoutProb = 0.1;
            var model = new BertForSequenceClassification(new BertModel(config, addPoolingLayer: true), 3, SequencePooling.Cls, seed: 1);
            var options = new TrainingOptions { MaxSteps = 8, BatchSize = 8, LearningRate = 1e-3, WarmupSteps = 2, Seed = 4 };
            using var neighbour = crowded ? RandomDrawingThread.Start() : null;
            new SequenceClassifierTrainer(model, options).Train(Task(64, 5));
            return model;
        }
        using var alone = Train(crowded: false);
        using var crowded = Train(crowded: true);
        foreach (var (name, expected) in alone.state_dict())
            TensorAssert.BitIdentical(expected, crowded.state_dict()[name], name);
    }

    /// <summary>The classifier runs on the shared trainer: checkpoints, accumulation and exact resume come with it.</summary>
    [Fact]
    public void AnInterruptedClassifierRunResumesToTheWeightsOfAnUninterruptedOne()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        static BertForSequenceClassification Classifier(int seed)
        {
            var config = TinyModels.Bert();
            config.HiddenDropoutProb = config.AttentionProbsDropoutProb = 0.1;
            return new BertForSequenceClassification(new BertModel(config, addPoolingLayer: true), 3, SequencePooling.Cls, seed: seed);
        }
        TrainingOptions Options(string? folder) => new()
        {
            MaxSteps = 7, BatchSize = 8, GradientAccumulationSteps = 2, LearningRate = 1e-3, WarmupSteps = 2, Seed = 4, CheckpointFolder = folder,
        };
        var data = Task(56, 5);   // 7 batches an epoch: the run crosses two epoch boundaries, one inside a step
        using var uninterrupted = Classifier(1);
        new SequenceClassifierTrainer(uninterrupted, Options(null)) { GroupByLength = true }.Train(data);

        using var dir = new TempFolder();
        using var first = Classifier(1);
        using var cts = new CancellationTokenSource();
        Assert.ThrowsAny<OperationCanceledException>(() => new SequenceClassifierTrainer(first, Options(dir.Path)) { GroupByLength = true }
            .Train(data, progress: SynchronousProgress.Create<TrainingProgress>(p => { if (p.Step == 3) cts.Cancel(); }), cancellationToken: cts.Token));
        using var resumed = Classifier(9);   // other initial weights: everything must come from the checkpoint
        var result = new SequenceClassifierTrainer(resumed, Options(dir.Path)) { GroupByLength = true }.Train(data);
        Assert.Equal(7, result.Steps);
        Assert.Equal(Path.Combine(dir.Path, "checkpoint-000007"), result.LastCheckpoint);
        foreach (var (name, expected) in uninterrupted.state_dict())
            TensorAssert.BitIdentical(expected, resumed.state_dict()[name], name);
    }

    [Fact]
    public void GroupingByLengthVisitsEveryExampleOnceWithLessPadding()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var random = new Random(8);
        var examples = Enumerable.Range(0, 1000).Select(i => new ClassificationExample(Enumerable.Repeat(5, random.Next(3, 60)).ToList(), [], 0)).ToList();
        long Padded(List<int[]> batches) => batches.Sum(b => (long)b.Length * b.Max(i => examples[i].Ids.Count));
        foreach (bool grouped in new[] { false, true })
        {
            var batches = SequenceClassifierTrainer.EpochBatches(examples, 8, grouped, seed: 3);
            Assert.Equal(Enumerable.Range(0, 1000), batches.SelectMany(b => b).Order());
            Assert.Equal(batches.Select(b => string.Join(",", b)), SequenceClassifierTrainer.EpochBatches(examples, 8, grouped, seed: 3).Select(b => string.Join(",", b)));
            Assert.NotEqual(batches.Select(b => string.Join(",", b)), SequenceClassifierTrainer.EpochBatches(examples, 8, grouped, seed: 4).Select(b => string.Join(",", b)));
        }
        long random8 = Padded(SequenceClassifierTrainer.EpochBatches(examples, 8, false, 3)), grouped8 = Padded(SequenceClassifierTrainer.EpochBatches(examples, 8, true, 3));
        long real = examples.Sum(e => (long)e.Ids.Count);
        output.WriteLine($"tokens incl. padding per real token: random {random8 / (double)real:F2}, grouped {grouped8 / (double)real:F2}");
        Assert.True(grouped8 < real * 1.1 && random8 > real * 1.4, $"random {random8}, grouped {grouped8}, real {real}");
    }
}
