using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.ML.Retrieval;

namespace MLNetPeft.ML.Tests;

/// <summary>The prompt-building stage of RAG: template, context from retrieved passages, in-context demonstrations.</summary>
public class PromptBuilderTests
{
    public sealed class Row
    {
        public string Query { get; set; } = "";
        [VectorType] public string[] Passages { get; set; } = [];
    }

    private static readonly Demonstration[] Pool =
    [
        new("Where does Mira live?", "Oslo"), new("What is Tom's pet called?", "Rex"), new("Which volcano is near Catania?", "Etna"),
        new("How many strings has a violin?", "four"), new("What food does Ana enjoy?", "soup"),
    ];

    [Fact]
    public void TheTemplateGetsTheQuestionTheNumberedPassagesAndFixedDemonstrations()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(new[] { new Row { Query = "Who wrote {context}?", Passages = ["first passage", "second passage"] } });
        var options = new PromptBuilderOptions { Demonstrations = Pool, DemonstrationCount = 2 };
        var prompt = ml.Transforms.Text.BuildPrompt("Prompt", options).Fit(data).Transform(data).GetColumn<string>("Prompt").Single();
        // The question's own "{context}" is not filled in: the template is read once.
        Assert.Equal("Question: Where does Mira live?\nAnswer: Oslo\n\nQuestion: What is Tom's pet called?\nAnswer: Rex\n\n" +
            "Context:\n[1] first passage\n[2] second passage\n\nQuestion: Who wrote {context}?\nAnswer:", prompt);
        var zeroShot = new PromptBuilderOptions { PassagesColumnName = null, Template = "Q: {question}\nA:" };
        Assert.Equal("Q: Who wrote {context}?\nA:", ml.Transforms.Text.BuildPrompt("Prompt", zeroShot).Fit(data).Transform(data).GetColumn<string>("Prompt").Single());
    }

    [Fact]
    public void RandomDemonstrationsDependOnlyOnTheSeedAndTheQuestion()
    {
        var ml = new MLContext(seed: 1);
        var rows = Enumerable.Range(0, 12).Select(i => new Row { Query = $"question {i}?", Passages = ["p"] }).ToArray();
        var data = ml.Data.LoadFromEnumerable(rows);
        List<string> Prompts(int seed) => ml.Transforms.Text.BuildPrompt("Prompt", new PromptBuilderOptions
            { Demonstrations = Pool, DemonstrationCount = 2, Selection = DemonstrationSelection.Random, Seed = seed }).Fit(data).Transform(data).GetColumn<string>("Prompt").ToList();
        var a = Prompts(7);
        Assert.Equal(a, Prompts(7));
        Assert.NotEqual(a, Prompts(8));
        Assert.True(a.Distinct().Count() > 1, "rows get different demonstrations");
        Assert.All(a, p => Assert.Equal(2, Pool.Count(d => p.Contains(d.Question, StringComparison.Ordinal))));
    }

    [Fact]
    public async Task NearestDemonstrationsComeLastAndASavedRagPipelineBuildsTheSamePromptsInAFreshProcess()
    {
        var ml = new MLContext(seed: 1);
        var corpus = ml.Data.LoadFromEnumerable(new[]
        {
            new RetrievalTests.Document { Id = "etna", Text = "Mount Etna is an active volcano near Catania in Sicily." },
            new RetrievalTests.Document { Id = "violin", Text = "A violin has four strings and is played with a bow." },
        });
        var rows = new[] { new FreshProcess.Row("Which volcano erupts in Sicily?", ""), new FreshProcess.Row("What is played with a bow?", "") };
        var data = ml.Data.LoadFromEnumerable(rows);
        var pipeline = ml.Retrieval().Retrieve(corpus, new RetrievalOptions { QueryColumnName = "Text", Top = 1 })
            .Append(ml.Transforms.Text.BuildPrompt("Prompt", new PromptBuilderOptions
            {
                QuestionColumnName = "Text", Demonstrations = Pool, DemonstrationCount = 2, Selection = DemonstrationSelection.Nearest,
            }));
        var model = pipeline.Fit(data);
        try
        {
            var prompts = model.Transform(data).GetColumn<string>("Prompt").ToList();
            // The nearest pool question is the last demonstration, right before the row's own question.
            Assert.Contains("Question: Which volcano is near Catania?\nAnswer: Etna\n\nContext:\n[1] Mount Etna", prompts[0]);
            Assert.Contains("Question: How many strings has a violin?\nAnswer: four\n\nContext:\n[1] A violin", prompts[1]);
            var scratch = Path.Combine(Path.GetTempPath(), "mlnetpeft-tests", Guid.NewGuid().ToString("N"));
            Directory.CreateDirectory(scratch);
            try
            {
                var path = Path.Combine(scratch, "rag.zip");
                ml.Model.Save(model, data.Schema, path);
                Assert.Equal(FreshProcess.Columns(model.Transform(data), ["Prompt"]), await FreshProcess.RunAsync(path, rows, ["Prompt"], scratch));
            }
            finally
            {
                Directory.Delete(scratch, recursive: true);
            }
        }
        finally
        {
            foreach (var t in model) (t as IDisposable)?.Dispose();
        }
    }

    [Fact]
    public void BadTemplatesPoolsAndColumnsAreNamed()
    {
        var ml = new MLContext(seed: 1);
        Assert.Equal("Template", Assert.Throws<ArgumentException>(() => ml.Transforms.Text.BuildPrompt(options: new PromptBuilderOptions { Template = "no placeholder" })).ParamName);
        Assert.Equal("Demonstrations", Assert.Throws<ArgumentException>(() => ml.Transforms.Text.BuildPrompt(options: new PromptBuilderOptions { Demonstrations = Pool, DemonstrationCount = 9 })).ParamName);
        var flat = ml.Data.LoadFromEnumerable(new[] { new RetrievalTests.Question { Text = "q" } });
        var wrong = new PromptBuilderOptions { QuestionColumnName = "Text", PassagesColumnName = "Text" };
        Assert.Contains("Text", Assert.ThrowsAny<ArgumentException>(() => ml.Transforms.Text.BuildPrompt(options: wrong).Fit(flat)).Message);
        Assert.Contains("Query", Assert.ThrowsAny<ArgumentException>(() => ml.Transforms.Text.BuildPrompt().Fit(flat)).Message);
    }
}
