using MLNetPeft.Architectures;
using MLNetPeft.Generation;
using MLNetPeft.Training;
using MLNetPeft.Training.Classification;
using MLNetPeft.Training.LanguageModeling;
using MLNetPeft.Tuners.AdaLora;
using MLNetPeft.Tuners.Ia3;
using MLNetPeft.Tuners.Lora;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Tests;

/// <summary>
/// No tensor is left to the finalizer: a temporary that no managed code references can be finalized by the GC while
/// libtorch still uses its handle ("tensor does not have a device", "Unknown scalar type", heap corruption). Every
/// entry point that computes runs inside a dispose scope, so called without one it creates no tensor outside a scope
/// (TorchSharp's per-thread statistics count them), and it survives a thread that forces finalization all the time.
/// </summary>
public class TensorLifetimeTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>Tensors <paramref name="action"/> creates outside any dispose scope (the test itself opens none).</summary>
    private static long CreatedOutsideAScope(Action action)
    {
        var statistics = DisposeScopeManager.Statistics;
        statistics.Reset();
        action();
        return statistics.TensorStatistics.CreatedOutsideScopeCount;
    }

    private static LlamaForCausalLM TinyLlama(long seed) => TinyModels.Randomize(new LlamaForCausalLM(PeftMethodTests.TinyLlama()), seed);

    [Theory]
    [InlineData("llama")]
    [InlineData("gpt2")]
    public void ForwardGenerationScoringAndEvaluationCreateNoTensorOutsideAScope(string family)
    {
        using var model = PeftMethodTests.Tiny(family, 3);
        var tokenizer = TinyTokenizer.Create();
        var ids = TinyModels.RandomIds(2, 6, TinyTokenizer.VocabSize, 1);
        var blocks = PeftMethodTests.ToyTask(TinyTokenizer.VocabSize);
        Tensor? logits = null;
        Assert.Equal(0, CreatedOutsideAScope(() => logits = model.Forward(ids)));
        logits!.Dispose();
        var generator = new TextGenerator(model, tokenizer);
        Assert.Equal(0, CreatedOutsideAScope(() => generator.Generate(["ab c", "d"], new GenerationOptions { MaxNewTokens = 5, StopTokenIds = [] })));
        Assert.Equal(0, CreatedOutsideAScope(() => generator.Generate(["ab c"], new GenerationOptions
            { MaxNewTokens = 5, DoSample = true, TopK = 10, TopP = 0.9, RepetitionPenalty = 1.2, Seed = 3, StopTokenIds = [] })));
        Assert.Equal(0, CreatedOutsideAScope(() => ContinuationScorer.LogLikelihoods(model, tokenizer, "ab", [" c", " de"])));
        Assert.Equal(0, CreatedOutsideAScope(() => LanguageModelTrainer.Evaluate(model, blocks, 8, 2)));
    }

    [Theory]
    [InlineData("lora")]
    [InlineData("dora")]
    [InlineData("ia3")]
    [InlineData("adalora")]
    [InlineData("houlsby")]
    [InlineData("layernorm")]
    [InlineData("prompt")]
    [InlineData("ptuning-mlp")]
    [InlineData("ptuning-lstm")]
    [InlineData("prefix")]
    public void ApplyingTrainingAndMergingEveryMethodCreateNoTensorOutsideAScope(string method)
    {
        using var model = TinyLlama(4);
        var blocks = PeftMethodTests.ToyTask(TinyTokenizer.VocabSize);
        PeftModel? peft = null;
        Assert.Equal(0, CreatedOutsideAScope(() => peft = PeftMethodTests.Apply(method, model)));
        var options = new TrainingOptions { MaxSteps = 3, BatchSize = 4, LearningRate = 1e-2, WarmupSteps = 1, Seed = 1 };
        var trainer = new LanguageModelTrainer(model, options, peft as ITrainingStepHook);
        Assert.Equal(0, CreatedOutsideAScope(() => trainer.Train(blocks)));
        Assert.Equal(0, CreatedOutsideAScope(() => _ = peft!.AdapterStateDict()));
        switch (peft)
        {
            case LoraModel lora:
                Assert.Equal(0, CreatedOutsideAScope(() => { lora.Merge(); lora.Unmerge(); }));
                break;
            case Ia3Model ia3:
                Assert.Equal(0, CreatedOutsideAScope(() => { ia3.Merge(); ia3.Unmerge(); }));
                break;
        }
        Assert.Equal(0, CreatedOutsideAScope(() => { using (peft!.DisableAdapters()) { } }));
        bool mergeable = peft is LoraModel or Ia3Model or AdaLoraModel or Selective.SelectiveModel;
        Assert.Equal(0, CreatedOutsideAScope(() => { if (mergeable) peft!.MergeAndUnload(); else peft!.Unload(); }));
    }

    /// <summary>A model's weights belong to the model: built and adapted inside a caller's scope, they outlive it.</summary>
    [Theory]
    [InlineData("lora")]
    [InlineData("adalora")]
    [InlineData("ia3")]
    [InlineData("houlsby")]
    [InlineData("layernorm")]
    [InlineData("prompt")]
    [InlineData("ptuning-lstm")]
    [InlineData("prefix")]
    public void AModelBuiltAndAdaptedInsideACallersScopeKeepsItsWeightsAfterTheScopeEnds(string method)
    {
        CausalLanguageModel model;
        using (NewDisposeScope())
        {
            model = TinyLlama(8);
            PeftMethodTests.Apply(method, model);
        }
        using (model)
        {
            Assert.All(model.named_parameters(), p => Assert.False(p.parameter.IsInvalid, $"{p.name} was disposed with the caller's scope"));
            using var scope = NewDisposeScope();
            var logits = model.Forward(TinyModels.RandomIds(1, 5, TinyTokenizer.VocabSize, 2));
            Assert.True(logits.isfinite().all().item<bool>());
        }
    }

    [Fact]
    public void ClassifierTrainingAndPredictionCreateNoTensorOutsideAScope()
    {
        using var model = new BertForSequenceClassification(new BertModel(TinyModels.Bert(), addPoolingLayer: true), 3, SequencePooling.Cls, seed: 1);
        var random = new Random(2);
        var examples = Enumerable.Range(0, 32).Select(i => new ClassificationExample(
            Enumerable.Range(0, 3 + i % 6).Select(_ => random.Next(5, 80)).ToList(), Enumerable.Repeat(0, 3 + i % 6).ToList(), i % 3)).ToList();
        LoraModel? lora = null;
        Assert.Equal(0, CreatedOutsideAScope(() => lora = LoraModel.Apply(model, new LoraConfig { R = 2, TargetModules = ["query", "value"] })));
        var trainer = new SequenceClassifierTrainer(model, new TrainingOptions { MaxSteps = 3, BatchSize = 8, WarmupSteps = 1, Seed = 1 });
        Assert.Equal(0, CreatedOutsideAScope(() => trainer.Train(examples)));
        Assert.Equal(0, CreatedOutsideAScope(() => SequenceClassifierTrainer.Evaluate(model, examples)));
        Assert.Equal(0, CreatedOutsideAScope(() => SequenceClassifierTrainer.Predict(model, examples.Take(4).ToList())));
        lora!.Dispose();
    }

    /// <summary>
    /// Generation, a LoRA training step, scoring and a merge, many times over, while another thread keeps forcing
    /// collections and running finalizers: a temporary left to the finalizer would be freed under libtorch's feet.
    /// Every round must also give exactly the first round's results.
    /// </summary>
    [Fact]
    public void EveryPathSurvivesAThreadThatKeepsRunningTheFinalizers()
    {
        using var model = TinyLlama(6);
        var tokenizer = TinyTokenizer.Create();
        var blocks = PeftMethodTests.ToyTask(TinyTokenizer.VocabSize);
        using var lora = LoraModel.Apply(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = [LoraConfig.AllLinear] }, seed: 2);
        // Each round starts from the same weights (unmerging is exact only up to rounding, so the base is restored too).
        var initial = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());

        using var stop = new CancellationTokenSource();
        long collections = 0;
        var collector = new Thread(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
                Interlocked.Increment(ref collections);
            }
        }) { IsBackground = true };
        collector.Start();
        string? firstText = null;
        double[]? firstScores = null;
        double? firstLoss = null;
        int rounds = 40;
        try
        {
            for (int round = 0; round < rounds; round++)
            {
                using (no_grad()) foreach (var (name, value) in initial) model.state_dict()[name].copy_(value);
                var loss = new LanguageModelTrainer(model, new TrainingOptions { MaxSteps = 2, BatchSize = 4, LearningRate = 1e-2, WarmupSteps = 1, Seed = 5 })
                    .Train(blocks).FinalLoss;
                var text = new TextGenerator(model, tokenizer).Generate("abc", new GenerationOptions { MaxNewTokens = 8, StopTokenIds = [] }).Text;
                var scores = ContinuationScorer.LogLikelihoods(model, tokenizer, "ab", [" c", "de"]);
                lora.Merge();
                var merged = ContinuationScorer.LogLikelihoods(model, tokenizer, "ab", [" c", "de"]);
                lora.Unmerge();
                firstLoss ??= loss;
                firstText ??= text;
                firstScores ??= scores;
                Assert.Equal(firstLoss.Value, loss);
                Assert.Equal(firstText, text);
                Assert.Equal(firstScores, scores);
                Assert.Equal(scores[0], merged[0], 4);
            }
        }
        finally
        {
            stop.Cancel();
            collector.Join();
        }
        output.WriteLine($"{rounds} rounds, {Interlocked.Read(ref collections)} forced collections with finalizers run");
        Assert.True(Interlocked.Read(ref collections) > rounds, "the collector thread must have run throughout");
    }
}
