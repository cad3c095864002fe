using System.IO.Compression;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Tasks;
using MLNetPeft.Generation;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Tokenization;
using MLNetPeft.Training;
using MLNetPeft.Tuners.Lora;

namespace MLNetPeft.ML.Tests;

/// <summary>How fitted transformers keep their model in the zip: embedded or referenced base, merged or unmerged adapter.</summary>
public class PersistenceTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly GenerationOptions Answer = new() { MaxNewTokens = 6, StopStrings = ["\n"] };
    private static readonly string[] Compared = ["Copy", TextGenerationTransformer.LogLikelihoodColumnName, TextGenerationTransformer.PerplexityColumnName];

    private static List<FreshProcess.Row> Rows(int people, int seed) =>
        InstructionTasks.Generate(InstructionTasks.TrainingSet(BaseModelRecipe.World()).Take(people).ToList(), 1, seed)
            .Select(e => new FreshProcess.Row(e.Prompt, e.Completion)).ToList();

    private static CausalLmFineTuningOptions Quick(FineTuningMethod method, bool merge, string prompt = "Text") => new()
    {
        Method = method, MergeAdapter = merge, PromptColumnName = prompt, ScoreResponses = true, MaxLength = 64, Generation = Answer, Seed = 4,
        Lora = new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = [LoraConfig.AllLinear] },
        Training = new TrainingOptions { MaxSteps = 8, BatchSize = 8, LearningRate = method == FineTuningMethod.Full ? 3e-4 : 5e-3, WarmupSteps = 1, WeightDecay = 0, Seed = 4 },
    };

    private static IEstimator<ITransformer> Chain(MLContext ml, CausalLanguageModel model, TextTokenizer tokenizer, CausalLmFineTuningOptions options) =>
        ml.Transforms.CopyColumns("Prompt", "Text")
            .Append(ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, options))
            .Append(ml.Transforms.CopyColumns("Copy", "GeneratedText"));

    [Theory]
    [InlineData(FineTuningMethod.Full, true)]
    [InlineData(FineTuningMethod.Lora, true)]
    [InlineData(FineTuningMethod.Lora, false)]
    public async Task AFreshProcessReproducesGeneratedTextAndScores(FineTuningMethod method, bool merge)
    {
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        var rows = Rows(24, 5);
        var data = ml.Data.LoadFromEnumerable(rows);
        using var model = BundledBaseModel.Load();
        var fitted = Chain(ml, model, BundledBaseModel.LoadTokenizer(), Quick(method, merge, prompt: "Prompt")).Fit(data);
        var tuned = ((IEnumerable<ITransformer>)fitted).OfType<TextGenerationTransformer>().Single();
        Assert.Equal(method == FineTuningMethod.Lora && !merge, tuned.HasUnmergedAdapter);
        Assert.Equal(BaseModelStorage.Embed, tuned.BaseModelStorage);   // 18.6 MB: under the 100 MB limit

        var expected = FreshProcess.Columns(fitted.Transform(data), Compared);
        var path = dir.File("model.zip");
        ml.Model.Save(fitted, data.Schema, path);
        var actual = await FreshProcess.RunAsync(path, rows, Compared, dir.Path);
        output.WriteLine($"{method} merge={merge}: {actual[1][..Math.Min(80, actual[1].Length)]}");
        Assert.Equal(expected, actual);

        using var zip = ZipFile.OpenRead(path);
        var streams = zip.Entries.Select(e => e.Name).ToList();
        Assert.Contains("File.model.safetensors", streams);
        Assert.Equal(!merge, streams.Contains("Adapter.adapter_model.safetensors"));
    }

    [Fact]
    public void AnUnmergedAdapterKeepsTheBaseWeightsAndMatchesTheMergedOne()
    {
        var ml = new MLContext(seed: 1);
        var rows = Rows(24, 5);
        var data = ml.Data.LoadFromEnumerable(rows);
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        using var merged = ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, Quick(FineTuningMethod.Lora, merge: true)).Fit(data);
        using var unmerged = ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, Quick(FineTuningMethod.Lora, merge: false)).Fit(data);
        using var untouched = ml.Transforms.Text.GenerateText(model, tokenizer, inputColumnName: "Text", options: Answer, scoredResponseColumnName: "Response").Fit(data);
        var mergedScores = merged.Transform(data).GetColumn<float>("LogLikelihood").ToList();
        var unmergedScores = unmerged.Transform(data).GetColumn<float>("LogLikelihood").ToList();
        var baseScores = untouched.Transform(data).GetColumn<float>("LogLikelihood").ToList();
        for (int i = 0; i < rows.Count; i++)
        {
            // Same seed, same training: merging only reorders the arithmetic.
            Assert.True(Math.Abs(mergedScores[i] - unmergedScores[i]) < 1e-3 * Math.Max(1, Math.Abs(mergedScores[i])), $"row {i}: {mergedScores[i]} vs {unmergedScores[i]}");
        }
        Assert.True(unmergedScores.Average() > baseScores.Average() + 1, $"log-likelihood {baseScores.Average():F2} -> {unmergedScores.Average():F2}");
    }

    [Theory]
    [InlineData(FineTuningMethod.Ia3, false, false)]
    [InlineData(FineTuningMethod.Ia3, true, false)]
    [InlineData(FineTuningMethod.LayerNorm, false, false)]
    [InlineData(FineTuningMethod.Lora, false, true)]
    [InlineData(FineTuningMethod.QLora, false, false)]
    [InlineData(FineTuningMethod.QLora, true, false)]
    [InlineData(FineTuningMethod.PromptTuning, true, false)]
    [InlineData(FineTuningMethod.PTuning, false, false)]
    [InlineData(FineTuningMethod.PrefixTuning, false, false)]
    [InlineData(FineTuningMethod.PTuningV2, false, false)]
    [InlineData(FineTuningMethod.AdapterTuning, true, false)]
    [InlineData(FineTuningMethod.AdaLora, false, false)]
    public void EveryPeftMethodIsSelectableLearnsAndRoundTrips(FineTuningMethod method, bool merge, bool dora)
    {
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        var rows = Rows(24, 5);
        var data = ml.Data.LoadFromEnumerable(rows);
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        var options = Quick(method, merge);
        options.Lora.UseDora = dora;
        if (method is not (FineTuningMethod.Lora or FineTuningMethod.QLora)) options.Training.LearningRate = 2e-2;
        options.PromptTuning = new() { NumVirtualTokens = 8, PromptTuningInit = Tuners.PromptTuning.PromptTuningInit.Text, PromptTuningInitText = "Answer with one word." };
        options.AdaLora = new() { InitR = 8, TargetR = 4, TInit = 1, TFinal = 2, TargetModules = [Tuners.Lora.LoraConfig.AllLinear], LoraAlpha = 16 };
        options.PTuning = new() { NumVirtualTokens = 8, EncoderHiddenSize = 64 };
        options.PrefixTuning = new() { NumVirtualTokens = 8, PrefixProjection = true, EncoderHiddenSize = 64 };
        using var untouched = ml.Transforms.Text.GenerateText(model, tokenizer, inputColumnName: "Text", options: Answer, scoredResponseColumnName: "Response").Fit(data);
        using var tuned = ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, options).Fit(data);
        Assert.Equal(!merge || method is FineTuningMethod.PromptTuning or FineTuningMethod.PTuning or FineTuningMethod.PrefixTuning or FineTuningMethod.PTuningV2
            or FineTuningMethod.AdapterTuning,
            tuned.HasUnmergedAdapter);
        double before = untouched.Transform(data).GetColumn<float>("LogLikelihood").Average();
        double after = tuned.Transform(data).GetColumn<float>("LogLikelihood").Average();
        output.WriteLine($"{method}{(dora ? " (DoRA)" : "")} merge={merge}: mean response log-likelihood {before:F2} -> {after:F2}");
        Assert.True(after > before + 0.5, $"log-likelihood {before:F2} -> {after:F2}");

        var path = dir.File("model.zip");
        ml.Model.Save(tuned, data.Schema, path);
        if (method == FineTuningMethod.QLora && !merge)
        {
            // The zip holds the base quantised: about 4.13 bits per linear weight instead of 32.
            using var zip = ZipFile.OpenRead(path);
            long stored = zip.Entries.Single(e => e.Name == "File.model.safetensors").Length;
            output.WriteLine($"quantised base in the zip: {stored:N0} bytes vs {ModelPackage.WeightBytes(model):N0} in float32");
            Assert.True(stored < ModelPackage.WeightBytes(model) / 2, $"{stored:N0} bytes");
        }
        var loaded = new MLContext(seed: 2).Model.Load(path, out _);
        Assert.Equal(FreshProcess.Columns(tuned.Transform(data), ["GeneratedText", "LogLikelihood"]),
            FreshProcess.Columns(loaded.Transform(data), ["GeneratedText", "LogLikelihood"]));
        Assert.All(loaded.Transform(data).GetColumn<string>("GeneratedText"), t => Assert.NotNull(t));
    }

    [Fact]
    public void BitFitOnTheBundledLlamaFailsAtFitSayingItHasNoBiases()
    {
        var ml = new MLContext(seed: 1);
        using var model = BundledBaseModel.Load();
        var options = Quick(FineTuningMethod.BitFit, merge: true);
        var e = Assert.Throws<ArgumentException>(() => ml.Transforms.Text.FineTuneCausalLm(model, BundledBaseModel.LoadTokenizer(), options).Fit(ml.Data.LoadFromEnumerable(Rows(4, 1))));
        Assert.Contains("bias", e.Message);
    }

    [Fact]
    public void AReferencedBaseModelIsCheckedWhenTheZipLoads()
    {
        using var dir = new TempFolder();
        var baseFolder = dir.File("base");
        Directory.CreateDirectory(baseFolder);
        foreach (var file in Directory.GetFiles(BundledBaseModel.Folder)) File.Copy(file, Path.Combine(baseFolder, Path.GetFileName(file)));
        var ml = new MLContext(seed: 1);
        var rows = Rows(16, 6);
        var data = ml.Data.LoadFromEnumerable(rows);
        using var model = PretrainedModels.LoadCausalLM(baseFolder);
        var tokenizer = TextTokenizer.FromPretrained(baseFolder);

        // Generation only, and an unmerged LoRA adapter: the zip holds the folder's path and hashes, not the weights.
        var options = Quick(FineTuningMethod.Lora, merge: false);
        options.BaseModelStorage = BaseModelStorage.Reference;
        var generating = ml.Transforms.Text.GenerateText(model, tokenizer, inputColumnName: "Text", options: Answer, baseModelStorage: BaseModelStorage.Reference).Fit(data);
        var tuned = ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, options).Fit(data);
        Assert.Equal(BaseModelStorage.Reference, tuned.BaseModelStorage);
        foreach (var (name, transformer) in new[] { ("generating", generating), ("tuned", tuned) })
        {
            var path = dir.File(name + ".zip");
            ml.Model.Save(transformer, data.Schema, path);
            Assert.True(new FileInfo(path).Length < 1_000_000, $"{name}: {new FileInfo(path).Length} bytes");
            using (var zip = ZipFile.OpenRead(path)) Assert.DoesNotContain(zip.Entries, e => e.Name.StartsWith("File.", StringComparison.Ordinal));
            var loaded = new MLContext(seed: 2).Model.Load(path, out _);
            Assert.Equal(transformer.Transform(data).GetColumn<string>("GeneratedText"), loaded.Transform(data).GetColumn<string>("GeneratedText"));
        }

        // A changed base fails clearly, naming the file and both hashes; a missing one names the folder.
        var config = Path.Combine(baseFolder, "config.json");
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"rms_norm_eps\"", "\"extra\": 1, \"rms_norm_eps\""));
        var changed = ExceptionChain.Find<InvalidDataException>(() => ml.Model.Load(dir.File("tuned.zip"), out _));
        Assert.Contains("config.json", changed.Message);
        Assert.Contains("SHA-256", changed.Message);
        Directory.Delete(baseFolder, recursive: true);
        var missing = ExceptionChain.Find<DirectoryNotFoundException>(() => ml.Model.Load(dir.File("generating.zip"), out _));
        Assert.Contains(baseFolder, missing.Message);
    }

    [Fact]
    public void ReferenceNeedsUnchangedBaseWeightsAndAutoEmbedsSmallModels()
    {
        using var model = BundledBaseModel.Load();
        var ml = new MLContext(seed: 1);
        var full = Quick(FineTuningMethod.Full, merge: true);
        full.BaseModelStorage = BaseModelStorage.Reference;
        Assert.Contains("BaseModelStorage", Assert.Throws<ArgumentException>(() => ml.Transforms.Text.FineTuneCausalLm(model, BundledBaseModel.LoadTokenizer(), full)).Message);
        var merged = Quick(FineTuningMethod.Lora, merge: true);
        merged.BaseModelStorage = BaseModelStorage.Reference;
        Assert.Contains("MergeAdapter", Assert.Throws<ArgumentException>(() => ml.Transforms.Text.FineTuneCausalLm(model, BundledBaseModel.LoadTokenizer(), merged)).Message);

        using var ch = ((IHostEnvironment)ml).Start("test");
        Assert.Equal(BaseModelStorage.Embed, ModelPackage.Resolve(BaseModelStorage.Auto, ModelPackage.EmbedLimitBytes, baseUnchanged: true, ch));
        Assert.Equal(BaseModelStorage.Reference, ModelPackage.Resolve(BaseModelStorage.Auto, ModelPackage.EmbedLimitBytes + 1, baseUnchanged: true, ch));
        Assert.Equal(BaseModelStorage.Embed, ModelPackage.Resolve(BaseModelStorage.Auto, ModelPackage.EmbedLimitBytes + 1, baseUnchanged: false, ch));
        Assert.Equal(4_656_384L * 4, ModelPackage.WeightBytes(model));
    }

    [Fact]
    public void ATokenizerThatDisagreesWithTheCheckpointIsRejected()
    {
        var ml = new MLContext(seed: 1);
        using var model = BundledBaseModel.Load();
        var data = ml.Data.LoadFromEnumerable(Rows(4, 1));
        var e = Assert.Throws<ArgumentException>(() => ml.Transforms.Text.GenerateText(model, TextTokenizer.FromTiktoken("gpt2"), inputColumnName: "Text").Fit(data));
        Assert.Contains("tokenizer", e.Message);
    }
}
