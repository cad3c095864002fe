using MLNetPeft.Architectures;
using MLNetPeft.Training;
using MLNetPeft.Training.LanguageModeling;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Tests;

public class TrainingLoopTests
{
    // A toy corpus with structure to learn: counting sequences in a small vocabulary.
    private static TokenBlocks Corpus(int documents, int seed, int vocab = 97)
    {
        var random = new Random(seed);
        var docs = Enumerable.Range(0, documents).Select(_ =>
        {
            int start = random.Next(1, vocab - 20), step = random.Next(1, 3);
            return (IReadOnlyList<int>)Enumerable.Range(0, 12).Select(i => start + i * step).ToList();
        }).ToList();
        return TokenBlocks.Pack(docs, 16, 0);
    }

    private static Gpt2ForCausalLM Gpt2WithDropout(long seed)
    {
        var config = TinyModels.Gpt2();
        config.ResidPdrop = config.EmbdPdrop = config.AttnPdrop = 0.1;
        var model = new Gpt2ForCausalLM(config);
        model.InitializeWeights(seed);
        return model;
    }

    /// <summary>Trains a tiny Llama two steps with checkpoints in <paramref name="folder"/>; the options returned go on to step 4.</summary>
    private static TrainingOptions CheckpointedAtStepTwo(string folder, TokenBlocks data)
    {
        var options = Options(folder);
        options.MaxSteps = 2;
        using (var first = new LlamaForCausalLM(TinyModels.Llama())) new LanguageModelTrainer(first, options).Train(data);
        options.MaxSteps = 4;
        return options;
    }

    private static TrainingOptions Options(string? folder = null) => new()
    {
        MaxSteps = 10, BatchSize = 4, LearningRate = 3e-3, WarmupSteps = 3, CheckpointFolder = folder, Seed = 5,
    };

    [Fact]
    public void PackingConcatenatesDocumentsWithSeparatorsAndShiftsTargets()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var blocks = TokenBlocks.Pack([[1, 2, 3], [4, 5]], blockSize: 2, separatorId: 0);
        Assert.Equal(3, blocks.Count);
        var (inputs, targets) = blocks.Batch([0, 1, 2]);
        Assert.Equal(new long[] { 1, 2, 3, 0, 4, 5 }, inputs.data<long>().ToArray());
        Assert.Equal(new long[] { 2, 3, 0, 4, 5, 0 }, targets.data<long>().ToArray());
        Assert.Throws<ArgumentException>(() => TokenBlocks.Pack([[1]], 8, 0));
    }

    [Fact]
    public void SupervisedExamplesLearnOnlyTheResponseByDefault()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var blocks = TokenBlocks.FromExamples([([5, 6], [7]), ([8], [9, 10, 11, 12, 13, 14])], blockSize: 6, padId: 1, eosId: 0);
        Assert.Equal(2, blocks.Count);
        Assert.Equal(1, blocks.Truncated);
        var (inputs, targets) = blocks.Batch([0, 1]);
        Assert.Equal(new long[] { 5, 6, 7, 0, 1, 1, 8, 9, 10, 11, 12, 13 }, inputs.data<long>().ToArray());
        Assert.Equal(new long[] { -100, 7, 0, -100, -100, -100, 9, 10, 11, 12, 13, 14 }, targets.data<long>().ToArray());
        Assert.Equal(8, blocks.TargetTokens);

        var everything = TokenBlocks.FromExamples([([5, 6], [7])], blockSize: 6, padId: 1, eosId: 0, completionOnly: false);
        Assert.Equal(new long[] { 6, 7, 0, -100, -100, -100 }, everything.Batch([0]).Targets.data<long>().ToArray());
    }

    [Fact]
    public void TrimmedBatchesEndAtTheLastTargetAndGiveTheSameLoss()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var blocks = TokenBlocks.FromExamples([([5, 6], [7]), ([8], [9, 10, 11])], blockSize: 12, padId: 1, eosId: 0);
        var (trimmedInputs, trimmedTargets) = blocks.Batch([0, 1], trimPadding: true);
        // The longer row is 8 9 10 11 0: its last target (eos) is predicted at position 3, so 4 columns are kept.
        Assert.Equal(new long[] { 2, 4 }, trimmedInputs.shape);
        Assert.Equal(new long[] { 5, 6, 7, 0, 8, 9, 10, 11 }, trimmedInputs.data<long>().ToArray());
        Assert.Equal(new long[] { -100, 7, 0, -100, 9, 10, 11, 0 }, trimmedTargets.data<long>().ToArray());
        Assert.Equal(new long[] { 1, 3 }, blocks.Batch([0], trimPadding: true).Inputs.shape);
        var (inputs, targets) = blocks.Batch([0, 1]);
        Assert.Equal(new long[] { 2, 12 }, inputs.shape);

        using var model = new LlamaForCausalLM(TinyModels.Llama());
        using var _ = no_grad();
        double full = LanguageModelTrainer.CrossEntropy(model.Forward(inputs), targets).item<float>();
        double trimmed = LanguageModelTrainer.CrossEntropy(model.Forward(trimmedInputs), trimmedTargets).item<float>();
        Assert.Equal(full, trimmed, 5);
    }

    [Fact]
    public void PackedExamplesSpanBlocksWithoutPaddingAndLearnOnlyResponses()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        // Stream: 5 6 | 7 0 | 8 | 9 10 0 (prompt | response eos), cut every 3 tokens; the last token has no successor.
        var blocks = TokenBlocks.PackExamples([([5, 6], [7]), ([8], [9, 10])], blockSize: 3, eosId: 0);
        Assert.Equal(2, blocks.Count);
        Assert.Equal(0, blocks.Truncated);
        var (inputs, targets) = blocks.Batch([0, 1]);
        Assert.Equal(new long[] { 5, 6, 7, 0, 8, 9 }, inputs.data<long>().ToArray());
        Assert.Equal(new long[] { -100, 7, 0, -100, 9, 10 }, targets.data<long>().ToArray());

        // Without completion-only loss every token is learned, as in Pack (the next example's first token too).
        var everything = TokenBlocks.PackExamples([([5, 6], [7]), ([8], [9, 10])], blockSize: 3, eosId: 0, completionOnly: false);
        Assert.Equal(new long[] { 6, 7, 0, 8, 9, 10 }, everything.Batch([0, 1]).Targets.data<long>().ToArray());
        Assert.Throws<ArgumentException>(() => TokenBlocks.PackExamples([([5], [6])], blockSize: 8, eosId: 0));
    }

    [Fact]
    public void CompletionOnlyTrainingLearnsTheResponses()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        // Prompt "a b" → response "b a": the model must learn to swap two tokens it is shown.
        var random = new Random(11);
        (IReadOnlyList<int>, IReadOnlyList<int>) Example() { int a = random.Next(2, 50), b = random.Next(50, 96); return ([a, b, 1], [b, a]); }
        var train = TokenBlocks.FromExamples(Enumerable.Range(0, 400).Select(_ => Example()).ToList(), 8, padId: 0, eosId: 96);
        var heldOut = TokenBlocks.FromExamples(Enumerable.Range(0, 60).Select(_ => Example()).ToList(), 8, padId: 0, eosId: 96);
        using var model = new LlamaForCausalLM(TinyModels.Llama());
        double before = LanguageModelTrainer.Evaluate(model, heldOut, 16);
        new LanguageModelTrainer(model, new TrainingOptions { MaxSteps = 150, BatchSize = 16, LearningRate = 1e-2, WarmupSteps = 10, Seed = 3 }).Train(train);
        double after = LanguageModelTrainer.Evaluate(model, heldOut, 16);
        Assert.True(after < before - 2.5, $"held-out response loss {before:F3} -> {after:F3}");
    }

    [Fact]
    public void ScheduleWarmsUpLinearlyThenDecaysByCosine()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var s = new LearningRateSchedule(1.0, 10, 110, 0.1);
        Assert.Equal(0.1, s.At(0), 12);
        Assert.Equal(1.0, s.At(9), 12);
        Assert.Equal(1.0, s.At(10), 12);
        Assert.Equal(0.55, s.At(60), 12);
        Assert.Equal(0.1, s.At(110), 12);
        Assert.True(s.At(30) > s.At(31));
    }

    [Fact]
    public void AdamWMatchesTorchsImplementation()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var generator = new Generator(9);
        var x = randn([16, 5], generator: generator);
        var target = randn([16, 3], generator: generator);
        using var ours = nn.Linear(5, 3);
        using var theirs = nn.Linear(5, 3);
        using (no_grad()) { theirs.weight!.copy_(ours.weight!); theirs.bias!.copy_(ours.bias!); }
        var optimizer = new AdamW(ours.named_parameters().Select(p => (p.name, p.parameter)), 0.9, 0.95, 1e-8, 0.1, decay: (_, _) => true);
        var reference = optim.AdamW(theirs.parameters(), lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1);
        for (int i = 0; i < 6; i++)
        {
            optimizer.ZeroGrad();
            nn.functional.mse_loss(ours.forward(x), target).backward();
            optimizer.Step(0.01);
            reference.zero_grad();
            nn.functional.mse_loss(theirs.forward(x), target).backward();
            reference.step();
        }
        TensorAssert.Close(theirs.weight!, ours.weight!, 1e-6, "weights after 6 AdamW steps");
        TensorAssert.Close(theirs.bias!, ours.bias!, 1e-6, "biases after 6 AdamW steps");
    }

    [Fact]
    public void TrainingLowersTrainingAndValidationLoss()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = new LlamaForCausalLM(TinyModels.Llama());
        model.InitializeWeights(1);
        var options = Options();
        options.MaxSteps = 60;
        options.LearningRate = 2e-2;
        options.EvalInterval = 20;
        var validation = Corpus(20, 99);
        double before = LanguageModelTrainer.Evaluate(model, validation, 8);
        var progress = new List<TrainingProgress>();
        var result = new LanguageModelTrainer(model, options).Train(Corpus(200, 1), validation, SynchronousProgress.Create<TrainingProgress>(progress.Add));
        Assert.Equal(60, progress.Count);
        Assert.True(result.ValidationLoss < before - 1.5, $"validation loss {before:F3} -> {result.ValidationLoss:F3}");
        Assert.True(result.LossHistory.Skip(50).Average() < result.LossHistory.Take(5).Average() - 1.5);
        Assert.Equal([20, 40, 60], result.ValidationHistory.Select(v => v.Step));
        Assert.All(progress, p => Assert.True(p.TokensPerSecond > 0 && p.LearningRate > 0));
        Assert.Equal(TimeSpan.Zero, progress[^1].Eta);
    }

    [Fact]
    public void ResumedRunEndsWithExactlyTheWeightsOfAnUninterruptedOne()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        var data = Corpus(100, 2);
        using var uninterrupted = Gpt2WithDropout(3);
        new LanguageModelTrainer(uninterrupted, Options()).Train(data);

        using var first = Gpt2WithDropout(3);
        var options = Options(dir.Path);
        options.CheckpointInterval = 4;
        using var cts = new CancellationTokenSource();
        Assert.ThrowsAny<OperationCanceledException>(() => new LanguageModelTrainer(first, options)
            .Train(data, progress: SynchronousProgress.Create<TrainingProgress>(p => { if (p.Step == 6) cts.Cancel(); }), cancellationToken: cts.Token));
        Assert.Equal(Path.Combine(dir.Path, "checkpoint-000006"), LanguageModelTrainer.LatestCheckpoint(dir.Path));

        using var resumed = Gpt2WithDropout(77); // different initial weights: everything must come from the checkpoint
        var result = new LanguageModelTrainer(resumed, options).Train(data);
        Assert.Equal(10, result.Steps);
        foreach (var (name, expected) in uninterrupted.state_dict())
            TensorAssert.BitIdentical(expected, resumed.state_dict()[name], name);
    }

    [Fact]
    public void AnotherThreadDrawingRandomNumbersDoesNotChangeTheTrainedWeights()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var data = Corpus(100, 2);
        using var alone = Gpt2WithDropout(6);
        new LanguageModelTrainer(alone, Options()).Train(data);

        using var crowded = Gpt2WithDropout(6);
        // Stands in for a second model training on another thread: it keeps taking from libtorch's global generator.
        using var neighbour = RandomDrawingThread.Start();
        new LanguageModelTrainer(crowded, Options()).Train(data);
        Assert.True(neighbour.Stop() > 0);
        foreach (var (name, expected) in alone.state_dict())
            TensorAssert.BitIdentical(expected, crowded.state_dict()[name], name);
    }

    /// <summary>A checkpoint folder resumes only its own run: another model, method or data is named, not silently loaded.</summary>
    [Fact]
    public void ResumingAnotherRunsCheckpointIsRefusedSayingWhatDiffers()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        var data = Corpus(50, 7);
        var options = CheckpointedAtStepTwo(dir.Path, data);

        var wider = TinyModels.Llama();
        wider.IntermediateSize = 80;
        using (var other = new LlamaForCausalLM(wider))
            Assert.Contains("model's config differs", Assert.Throws<InvalidOperationException>(() => new LanguageModelTrainer(other, options).Train(data)).Message);
        using (var adapted = new LlamaForCausalLM(TinyModels.Llama()))
        {
            using var lora = Tuners.Lora.LoraModel.Apply(adapted, new Tuners.Lora.LoraConfig { R = 2 });
            Assert.Contains("other parameters train", Assert.Throws<InvalidOperationException>(() => new LanguageModelTrainer(adapted, options).Train(data)).Message);
        }
        using (var same = new LlamaForCausalLM(TinyModels.Llama()))
        {
            var e = Assert.Throws<InvalidOperationException>(() => new LanguageModelTrainer(same, options).Train(Corpus(50, 8)));
            Assert.Contains("training data differs", e.Message);
            Assert.Contains("checkpoint-000002", e.Message);
            Assert.Equal(4, new LanguageModelTrainer(same, options).Train(data).Steps);   // its own data: it resumes
        }
    }

    [Fact]
    public void ResumingWithOtherBatchOptionsIsRefused()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        var data = Corpus(50, 7);
        var options = CheckpointedAtStepTwo(dir.Path, data);
        options.BatchSize = 2;
        using var second = new LlamaForCausalLM(TinyModels.Llama());
        var e = Assert.Throws<InvalidOperationException>(() => new LanguageModelTrainer(second, options).Train(data));
        Assert.Contains("BatchSize = 4", e.Message);
        options.Resume = false;
        Assert.Equal(4, new LanguageModelTrainer(second, options).Train(data).Steps);
        Assert.Equal([Path.Combine(dir.Path, "checkpoint-000004")], LanguageModelTrainer.Checkpoints(dir.Path));
    }

    [Fact]
    public void CancellationLeavesALoadableCheckpointOfTheLastStep()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = Gpt2WithDropout(4);
        using var cts = new CancellationTokenSource();
        var e = Assert.ThrowsAny<OperationCanceledException>(() => new LanguageModelTrainer(model, Options(dir.Path))
            .Train(Corpus(50, 3), progress: SynchronousProgress.Create<TrainingProgress>(p => { if (p.Step == 3) cts.Cancel(); }), cancellationToken: cts.Token));
        var checkpoint = Path.Combine(dir.Path, "checkpoint-000003");
        Assert.Contains(checkpoint, e.Message);
        Assert.Empty(Directory.GetDirectories(dir.Path, ".*"));
        using var loaded = PretrainedModels.LoadCausalLM(checkpoint);
        model.eval();
        var ids = TinyModels.RandomIds(1, 8, 97, 1);
        TensorAssert.BitIdentical(model.Forward(ids), loaded.Forward(ids));
    }

    [Fact]
    public void NaNLossStopsTheRunNamingTheStepAndKeepsTheLastGoodCheckpoint()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = new LlamaForCausalLM(TinyModels.Llama());
        var options = Options(dir.Path);
        options.LearningRate = 1e30;   // one update makes the weights huge; the next loss is not finite
        options.WarmupSteps = 0;
        options.MaxGradNorm = 0;
        options.CheckpointInterval = 1;
        var e = Assert.Throws<TrainingDivergedException>(() => new LanguageModelTrainer(model, options).Train(Corpus(50, 4)));
        Assert.Contains($"step {e.Step}", e.Message);
        Assert.True(e.Step >= 2);
        Assert.Equal(Path.Combine(dir.Path, $"checkpoint-{e.Step - 1:D6}"), e.LastCheckpoint);
        Assert.Contains(e.LastCheckpoint!, e.Message);
        Assert.Equal(e.LastCheckpoint, LanguageModelTrainer.LatestCheckpoint(dir.Path));
        using var loaded = PretrainedModels.LoadCausalLM(e.LastCheckpoint!);
    }

    [Fact]
    public void AccumulatedMicroBatchesEqualOneLargeBatch()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var data = Corpus(60, 5);
        using var large = new LlamaForCausalLM(TinyModels.Llama());
        using var accumulated = new LlamaForCausalLM(TinyModels.Llama());
        var options = Options();
        options.MaxSteps = 2;
        options.BatchSize = 8;
        new LanguageModelTrainer(large, options).Train(data);
        options.BatchSize = 4;
        options.GradientAccumulationSteps = 2;
        new LanguageModelTrainer(accumulated, options).Train(data);
        foreach (var (name, expected) in large.state_dict())
            TensorAssert.Close(expected, accumulated.state_dict()[name], 1e-5, name);
    }

    [Fact]
    public void Bf16TrainingKeepsFloat32MastersAndLearns()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = new LlamaForCausalLM(TinyModels.Llama());
        var options = Options(dir.Path);
        options.UseBf16 = true;
        options.MaxSteps = 40;
        options.LearningRate = 2e-2;
        var validation = Corpus(20, 98);
        double before = LanguageModelTrainer.Evaluate(model, validation, 8);
        var result = new LanguageModelTrainer(model, options).Train(Corpus(200, 6), validation);
        Assert.All(model.parameters(), p => Assert.Equal(ScalarType.BFloat16, p.dtype));
        Assert.True(result.ValidationLoss < before - 1.0, $"{before:F3} -> {result.ValidationLoss:F3}");
        using var saved = MLNetPeft.Checkpoints.SafetensorsFile.Open(Path.Combine(result.LastCheckpoint!, "model.safetensors"));
        Assert.All(saved.Tensors, t => Assert.Equal(MLNetPeft.Checkpoints.SafetensorsDType.F32, t.DType));
    }

    [Theory]
    [InlineData(nameof(TrainingOptions.LearningRate))]
    [InlineData(nameof(TrainingOptions.BatchSize))]
    [InlineData(nameof(TrainingOptions.MaxSteps))]
    [InlineData(nameof(TrainingOptions.GradientAccumulationSteps))]
    public void InvalidOptionsAreNamed(string option)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var options = Options();
        typeof(TrainingOptions).GetProperty(option)!.SetValue(options, option == nameof(TrainingOptions.LearningRate) ? -1.0 : (object)0);
        using var model = new LlamaForCausalLM(TinyModels.Llama());
        var e = Assert.ThrowsAny<ArgumentException>(() => new LanguageModelTrainer(model, options));
        Assert.Contains(option, e.Message);
    }
}
