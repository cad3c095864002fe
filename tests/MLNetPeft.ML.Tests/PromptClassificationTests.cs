using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Tasks;
using MLNetPeft.BaseModel.World;
using MLNetPeft.ML.Classification;

namespace MLNetPeft.ML.Tests;

/// <summary>Zero- and few-shot classification with the bundled causal LM: which pet does a person (seen in pretraining) have?</summary>
public class PromptClassificationTests(Xunit.Abstractions.ITestOutputHelper output)
{
    public sealed class Row
    {
        public string Sentence1 { get; set; } = "";
        public string Pet { get; set; } = "";
    }

    private static PromptClassificationOptions Options(int shots) => new()
    {
        Template = "{sentence1} has a", Shots = shots, Seed = 3,
        Verbalizer = SyntheticWorld.Pets.ToDictionary(p => p, p => new[] { " " + p }),
    };

    [Fact]
    public void ZeroAndFewShotPromptsClassifyFarAboveChanceEvaluateAndRoundTrip()
    {
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        // Demonstrations come from the fitted rows; accuracy is measured on 100 other people.
        var all = InstructionTasks.TrainingSet(BaseModelRecipe.World()).Take(140).ToList();
        var people = all.Skip(40).ToList();
        var fitData = ml.Data.LoadFromEnumerable(all.Take(40).Select(p => new Row { Sentence1 = p.Name, Pet = p.Pet }).ToArray());
        var data = ml.Data.LoadFromEnumerable(people.Select(p => new Row { Sentence1 = p.Name, Pet = p.Pet }).ToArray());
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        var results = new Dictionary<int, double>();
        foreach (int shots in new[] { 0, 4 })
        {
            var pipeline = ml.Transforms.Conversion.MapValueToKey("Label", "Pet")
                .Append(ml.MulticlassClassification.Trainers.PromptClassification(model, tokenizer, Options(shots)))
                .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedPet", "PredictedLabel"));
            var fitted = pipeline.Fit(fitData);
            var scored = fitted.Transform(data);
            var metrics = ml.MulticlassClassification.Evaluate(scored);
            results[shots] = metrics.MicroAccuracy;
            var prompt = ((IEnumerable<ITransformer>)fitted).OfType<PromptClassificationTransformer>().Single();
            output.WriteLine($"{shots}-shot: accuracy {metrics.MicroAccuracy:P0} (chance {1.0 / SyntheticWorld.Pets.Count:P0}), log-loss {metrics.LogLoss:F3}; demonstrations: {string.Join(" | ", prompt.Demonstrations)}");
            Assert.Equal(shots, prompt.Demonstrations.Count);
            Assert.DoesNotContain(prompt.Demonstrations, d => people.Any(p => d.StartsWith(p.Name + " ", StringComparison.Ordinal)));
            Assert.True(metrics.MicroAccuracy > 0.3, $"{shots}-shot accuracy {metrics.MicroAccuracy:P0}");   // chance is 12.5 %
            Assert.Equal(metrics.MicroAccuracy, scored.GetColumn<string>("PredictedPet").Zip(people).Count(x => x.First == x.Second.Pet) / 100.0, 6);
            if (shots == 4)
            {
                var path = dir.File("prompt.zip");
                ml.Model.Save(fitted, data.Schema, path);
                var loaded = new MLContext(seed: 2).Model.Load(path, out _);
                Assert.Equal(scored.GetColumn<float[]>("Score").Select(s => string.Join(",", s)), loaded.Transform(data).GetColumn<float[]>("Score").Select(s => string.Join(",", s)));
            }
            // The transformer owns nothing of the caller's: the next round classifies with the same model.
            prompt.Dispose();
        }
        Assert.All(model.parameters(), p => Assert.False(p.IsInvalid));
    }

    /// <summary>Classifying the fitted rows themselves: a row that is a demonstration is not shown its own answer.</summary>
    [Fact]
    public void ARowIsNeverItsOwnDemonstration()
    {
        var ml = new MLContext(seed: 1);
        var people = InstructionTasks.TrainingSet(BaseModelRecipe.World()).Take(30).ToList();
        var data = ml.Data.LoadFromEnumerable(people.Select(p => new Row { Sentence1 = p.Name, Pet = p.Pet }).ToArray());
        using var model = BundledBaseModel.Load();
        var fitted = ml.Transforms.Conversion.MapValueToKey("Label", "Pet")
            .Append(ml.MulticlassClassification.Trainers.PromptClassification(model, BundledBaseModel.LoadTokenizer(), Options(4))).Fit(data);
        using var prompt = fitted.LastTransformer;
        Assert.Equal(4, prompt.Demonstrations.Count);
        int demonstrated = 0;
        foreach (var person in people)
        {
            var text = prompt.BuildPrompt(person.Name, null);
            var own = $"{person.Name} has a {person.Pet}";
            bool isDemonstration = prompt.Demonstrations.Contains(own);
            if (isDemonstration) demonstrated++;
            Assert.DoesNotContain(own, text);
            Assert.Equal(isDemonstration ? 3 : 4, prompt.Demonstrations.Count(d => text.Contains(d, StringComparison.Ordinal)));
        }
        Assert.Equal(4, demonstrated);
    }

    [Fact]
    public void AVerbalizerWithoutAClassIsNamed()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(new[] { new Row { Sentence1 = "A", Pet = "cat" }, new Row { Sentence1 = "B", Pet = "dragon" } });
        using var model = BundledBaseModel.Load();
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label", "Pet")
            .Append(ml.MulticlassClassification.Trainers.PromptClassification(model, BundledBaseModel.LoadTokenizer(), Options(0)));
        Assert.Contains("'dragon'", Assert.ThrowsAny<ArgumentException>(() => pipeline.Fit(data)).Message);
        Assert.Contains("{sentence1}", Assert.Throws<ArgumentException>(() => ml.MulticlassClassification.Trainers.PromptClassification(model, BundledBaseModel.LoadTokenizer(),
            new PromptClassificationOptions { Template = "no slot", Verbalizer = Options(0).Verbalizer })).Message);
    }
}
