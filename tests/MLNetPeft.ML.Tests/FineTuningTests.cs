using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.Architectures;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Corpus;
using MLNetPeft.BaseModel.Tasks;
using MLNetPeft.Generation;
using MLNetPeft.ML.Evaluation;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Generation;
using MLNetPeft.Training;
using MLNetPeft.Tuners.Lora;

namespace MLNetPeft.ML.Tests;

public class FineTuningTests(Xunit.Abstractions.ITestOutputHelper output)
{
    public sealed class Row
    {
        public string Question { get; set; } = "";
        public string Response { get; set; } = "";
    }

    private static Row[] Rows(IEnumerable<InstructionExample> examples) =>
        examples.Select(e => new Row { Question = e.Prompt, Response = e.Completion }).ToArray();

    private static readonly GenerationOptions Answer = new() { MaxNewTokens = 6, StopStrings = ["\n"] };

    private static double ExactMatch(IDataView transformed, IReadOnlyList<InstructionExample> examples) =>
        transformed.GetColumn<string>("GeneratedText").Zip(examples).Count(x => x.First.Trim() == x.Second.Response) / (double)examples.Count;

    [Fact]
    public void LoraFineTuningInAPipelineLearnsHeldOutInstructionsAndRoundTrips()
    {
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        var world = BaseModelRecipe.World();
        var trainExamples = InstructionTasks.Generate(InstructionTasks.TrainingSet(world), 2, 1);
        var testExamples = InstructionTasks.Generate(InstructionTasks.HeldOutSet(world), 1, 2);
        var train = ml.Data.LoadFromEnumerable(Rows(trainExamples));
        var test = ml.Data.LoadFromEnumerable(Rows(testExamples));
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        var baseWeights = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());

        var before = ml.Transforms.CopyColumns("Prompt", "Question").Append(ml.Transforms.Text.GenerateText(model, tokenizer, options: Answer)).Fit(train);
        double emBefore = ExactMatch(before.Transform(test), testExamples);

        var steps = new List<TrainingProgress>();
        var options = new CausalLmFineTuningOptions
        {
            Lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] },
            Training = new TrainingOptions { MaxSteps = 200, BatchSize = 16, LearningRate = 5e-3, WarmupSteps = 10, WeightDecay = 0, Seed = 1 },
            MaxLength = 64, Generation = Answer, Seed = 1, Progress = new SynchronousProgress<TrainingProgress>(steps.Add),
        };
        var pipeline = ml.Transforms.CopyColumns("Prompt", "Question").Append(ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, options));
        var fitted = pipeline.Fit(train);
        double emAfter = ExactMatch(fitted.Transform(test), testExamples);
        output.WriteLine($"held-out exact match {emBefore:P0} -> {emAfter:P0}");

        // The same through the evaluation catalog, with teacher-forced scores of the references.
        var beforeMetrics = ml.TextGeneration().Evaluate(before.Transform(test), "Response", model: before.LastTransformer);
        var afterMetrics = ml.TextGeneration().Evaluate(fitted.Transform(test), "Response", model: fitted.LastTransformer);
        output.WriteLine($"before: {beforeMetrics}; after: {afterMetrics}");
        Assert.Equal(emAfter, afterMetrics.ExactMatch, 6);
        Assert.True(afterMetrics.Perplexity < beforeMetrics.Perplexity / 2, $"perplexity {beforeMetrics.Perplexity:F2} -> {afterMetrics.Perplexity:F2}");
        Assert.True(afterMetrics.TokenAccuracy > beforeMetrics.TokenAccuracy + 0.3, $"token accuracy {beforeMetrics.TokenAccuracy:P0} -> {afterMetrics.TokenAccuracy:P0}");
        Assert.True(emBefore < 0.2, $"before: {emBefore:P0}");
        Assert.True(emAfter >= 0.8, $"after: {emAfter:P0}");
        Assert.Equal(200, steps.Count);
        foreach (var (name, w) in baseWeights) TensorAssert.BitIdentical(w, model.state_dict()[name], name);  // the caller's model is untouched

        var path = dir.File("tuned.zip");
        ml.Model.Save(fitted, train.Schema, path);
        var fresh = new MLContext(seed: 3);
        var loaded = fresh.Model.Load(path, out _);
        var freshTest = fresh.Data.LoadFromEnumerable(Rows(testExamples));
        Assert.Equal(fitted.Transform(test).GetColumn<string>("GeneratedText"), loaded.Transform(freshTest).GetColumn<string>("GeneratedText"));
    }

    [Fact]
    public void FullFineTuningChangesEveryLayerAndRoundTrips()
    {
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        var world = BaseModelRecipe.World();
        var examples = InstructionTasks.Generate(InstructionTasks.TrainingSet(world).Take(40).ToList(), 1, 4);
        var data = ml.Data.LoadFromEnumerable(Rows(examples));
        using var model = BundledBaseModel.Load();
        var options = new CausalLmFineTuningOptions
        {
            Method = FineTuningMethod.Full, PromptColumnName = "Question", MaxLength = 64, Generation = Answer,
            Training = new TrainingOptions { MaxSteps = 5, BatchSize = 8, LearningRate = 1e-4, WarmupSteps = 1, Seed = 2 },
        };
        using var fitted = ml.Transforms.Text.FineTuneCausalLm(model, BundledBaseModel.LoadTokenizer(), options).Fit(data);
        var generated = fitted.Transform(data).GetColumn<string>("GeneratedText").ToList();

        var path = dir.File("full.zip");
        ml.Model.Save(fitted, data.Schema, path);
        var fresh = new MLContext(seed: 9);
        var loaded = fresh.Model.Load(path, out _);
        Assert.Equal(generated, loaded.Transform(fresh.Data.LoadFromEnumerable(Rows(examples))).GetColumn<string>("GeneratedText"));

        // Every layer moved (not only adapters); the caller's model did not.
        using var reread = System.IO.Compression.ZipFile.OpenRead(path);
        var tunedFolder = dir.File("tuned");
        Directory.CreateDirectory(tunedFolder);
        foreach (var entry in reread.Entries.Where(e => e.Name.StartsWith("File.", StringComparison.Ordinal)))
            System.IO.Compression.ZipFileExtensions.ExtractToFile(entry, Path.Combine(tunedFolder, entry.Name["File.".Length..]));
        using var tuned = PretrainedModels.LoadCausalLM(tunedFolder);
        using var original = BundledBaseModel.Load();
        foreach (var (name, w) in original.state_dict())
        {
            using var comparison = TorchSharp.torch.NewDisposeScope();
            Assert.False(w.equal(tuned.state_dict()[name]).all().item<bool>(), $"{name} did not change");
            TensorAssert.BitIdentical(w, model.state_dict()[name], name);
        }
    }

    /// <summary>A bf16 model trains in bf16 (the loss falls), and the tuned model, in the transformer and after a reload, is bf16 too.</summary>
    [Fact]
    public void ABFloat16ModelFineTunesInBFloat16AndComesBackInBFloat16()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        var examples = InstructionTasks.Generate(InstructionTasks.TrainingSet(BaseModelRecipe.World()).Take(40).ToList(), 1, 5);
        var data = ml.Data.LoadFromEnumerable(Rows(examples));
        using var model = BundledBaseModel.Load(new ModelLoadOptions { DType = TorchSharp.torch.ScalarType.BFloat16 });
        var losses = new List<double>();
        var options = new CausalLmFineTuningOptions
        {
            PromptColumnName = "Question", MaxLength = 64, Generation = Answer, Progress = new SynchronousProgress<TrainingProgress>(p => losses.Add(p.Loss)),
            Lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] },
            Training = new TrainingOptions { MaxSteps = 30, BatchSize = 8, LearningRate = 5e-3, WarmupSteps = 2, WeightDecay = 0, Seed = 4 },
        };
        using var fitted = ml.Transforms.Text.FineTuneCausalLm(model, BundledBaseModel.LoadTokenizer(), options).Fit(data);
        output.WriteLine($"bf16 loss {losses.Take(5).Average():F3} -> {losses.TakeLast(5).Average():F3}");
        Assert.True(losses.TakeLast(5).Average() < losses.Take(5).Average() * 0.8, $"loss {losses.Take(5).Average():F3} -> {losses.TakeLast(5).Average():F3}");
        Assert.All(fitted.Model.parameters(), p => Assert.Equal(TorchSharp.torch.ScalarType.BFloat16, p.dtype));
        var generated = fitted.Transform(data).GetColumn<string>("GeneratedText").ToList();

        var path = dir.File("bf16.zip");
        ml.Model.Save(fitted, data.Schema, path);
        using var loaded = (TextGenerationTransformer)new MLContext(seed: 2).Model.Load(path, out _);
        Assert.All(loaded.Model.parameters(), p => Assert.Equal(TorchSharp.torch.ScalarType.BFloat16, p.dtype));
        Assert.Equal(generated, loaded.Transform(data).GetColumn<string>("GeneratedText"));
        Assert.All(model.parameters(), p => Assert.Equal(TorchSharp.torch.ScalarType.BFloat16, p.dtype));   // the caller's model as given
    }

    public sealed class Doc
    {
        public string Text { get; set; } = "";
    }

    [Fact]
    public void ContinuedPretrainingOnOneTextColumnWithPackingLearnsNewFacts()
    {
        var ml = new MLContext(seed: 1);
        var world = BaseModelRecipe.World();
        // Knowledge-base people never occur in the pretraining corpus; validation states the same facts in another order.
        var people = world.KnowledgeBasePeople.Take(30).ToList();
        var train = ml.Data.LoadFromEnumerable(people.Select(p => new Doc { Text = string.Join(' ', CorpusGenerator.Facts(p)) }).ToArray());
        var validation = ml.Data.LoadFromEnumerable(people.Select(p => new Doc { Text = string.Join(' ', CorpusGenerator.Facts(p).Reverse()) }).ToArray());
        using var model = BundledBaseModel.Load();
        var steps = new List<TrainingProgress>();
        var options = new CausalLmFineTuningOptions
        {
            TextColumnName = "Text", Packing = true, MaxLength = 64, ValidationData = validation, LongRows = BadRowHandling.Fail,
            Lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] }, Seed = 1,
            Training = new TrainingOptions { MaxSteps = 60, BatchSize = 8, LearningRate = 5e-3, WarmupSteps = 5, WeightDecay = 0, Seed = 1, EvalInterval = 10 },
            Generation = new GenerationOptions { MaxNewTokens = 4, StopStrings = ["."] }, Progress = new SynchronousProgress<TrainingProgress>(steps.Add),
        };
        var estimator = ml.Transforms.Text.FineTuneCausalLm(model, BundledBaseModel.LoadTokenizer(), options);
        using var fitted = estimator.Fit(train);
        var evaluated = steps.Where(s => s.Step % 10 == 0).Select(s => (s.Step, Loss: s.ValidationLoss!.Value)).DistinctBy(s => s.Step).ToList();
        output.WriteLine(string.Join(", ", evaluated.Select(e => $"step {e.Step}: {e.Loss:F3}")));
        Assert.Equal([10, 20, 30, 40, 50, 60], evaluated.Select(e => e.Step));
        Assert.True(evaluated[^1].Loss < 0.7 * evaluated[0].Loss, $"validation loss {evaluated[0].Loss:F3} -> {evaluated[^1].Loss:F3}");

        // The fitted transformer continues the text column.
        var prompts = ml.Data.LoadFromEnumerable(people.Take(10).Select(p => new Doc { Text = $"{p.Name} lives in" }).ToArray());
        var towns = fitted.Transform(prompts).GetColumn<string>("GeneratedText").ToList();
        int right = towns.Zip(people).Count(x => x.First.Trim().TrimEnd('.') == x.Second.Town);
        output.WriteLine($"towns right: {right}/10: {string.Join(" | ", towns)}");
        Assert.All(towns, t => Assert.False(string.IsNullOrWhiteSpace(t)));
    }

    [Fact]
    public void BadInputIsRejectedNamingWhatIsWrong()
    {
        var ml = new MLContext(seed: 1);
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        var quick = new TrainingOptions { MaxSteps = 1, BatchSize = 1, WarmupSteps = 0 };
        var good = ml.Data.LoadFromEnumerable(new[] { new Row { Question = "Q", Response = " A" } });

        var missing = ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, new CausalLmFineTuningOptions { PromptColumnName = "Nope", Training = quick });
        Assert.Contains("Nope", Assert.ThrowsAny<ArgumentException>(() => missing.Fit(good)).Message);

        var empty = ml.Data.LoadFromEnumerable(Array.Empty<Row>());
        var ok = new CausalLmFineTuningOptions { PromptColumnName = "Question", Training = quick };
        Assert.Contains("no rows", Assert.ThrowsAny<ArgumentException>(() => ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, ok).Fit(empty)).Message);

        var blank = ml.Data.LoadFromEnumerable(new[] { new Row { Question = "Q", Response = " A" }, new Row { Question = "  ", Response = " B" } });
        var strict = new CausalLmFineTuningOptions { PromptColumnName = "Question", Training = quick, EmptyRows = BadRowHandling.Fail };
        Assert.Contains("Row 1", Assert.Throws<InvalidOperationException>(() => ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, strict).Fit(blank)).Message);
        using (ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, ok).Fit(blank)) { } // skipped with a logged count

        var longRow = ml.Data.LoadFromEnumerable(new[] { new Row { Question = string.Join(" ", Enumerable.Repeat("word", 50)), Response = " A" } });
        var tight = new CausalLmFineTuningOptions { PromptColumnName = "Question", Training = quick, MaxLength = 8, LongRows = BadRowHandling.Fail };
        Assert.Contains("MaxLength", Assert.ThrowsAny<Exception>(() => ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, tight).Fit(longRow)).Message);

        Assert.Contains("R", Assert.ThrowsAny<ArgumentException>(() => ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, new CausalLmFineTuningOptions { Lora = new LoraConfig { R = 0 } })).Message);
        Assert.Contains("LearningRate", Assert.ThrowsAny<ArgumentException>(() => ml.Transforms.Text.FineTuneCausalLm(model, tokenizer,
            new CausalLmFineTuningOptions { Training = new TrainingOptions { LearningRate = 0 } })).Message);
        Assert.Contains("BatchSize", Assert.ThrowsAny<ArgumentException>(() => ml.Transforms.Text.FineTuneCausalLm(model, tokenizer,
            new CausalLmFineTuningOptions { Training = new TrainingOptions { BatchSize = 0 } })).Message);
        var textScored = new CausalLmFineTuningOptions { TextColumnName = "Question", ScoreResponses = true, Training = quick };
        Assert.Contains("ScoreResponses", Assert.Throws<ArgumentException>(() => ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, textScored)).Message);
        var badValidation = ml.Data.LoadFromEnumerable(new[] { new Doc { Text = "x" } });
        var withValidation = new CausalLmFineTuningOptions { PromptColumnName = "Question", Training = quick, ValidationData = badValidation };
        Assert.Contains("Question", Assert.ThrowsAny<ArgumentException>(() => ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, withValidation).Fit(good)).Message);
        Assert.Contains("LoraAlpha", Assert.ThrowsAny<ArgumentException>(() => ml.Transforms.Text.FineTuneCausalLm(model, tokenizer,
            new CausalLmFineTuningOptions { Lora = new LoraConfig { LoraAlpha = 0 } })).Message);
        var wrongType = ml.Data.LoadFromEnumerable(new[] { new TypedRow { Question = 1f, Response = " A" } });
        Assert.Contains("Question", Assert.ThrowsAny<ArgumentException>(() => ml.Transforms.Text.FineTuneCausalLm(model, tokenizer,
            new CausalLmFineTuningOptions { PromptColumnName = "Question", Training = quick }).Fit(wrongType)).Message);
        var unknownTarget = new CausalLmFineTuningOptions { PromptColumnName = "Question", Training = quick, Lora = new LoraConfig { TargetModules = ["query"] } };
        var e = Assert.Throws<ArgumentException>(() => ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, unknownTarget).Fit(good));
        Assert.Contains("q_proj", e.Message);
    }

    public sealed class TypedRow
    {
        public float Question { get; set; }
        public string Response { get; set; } = "";
    }
}
