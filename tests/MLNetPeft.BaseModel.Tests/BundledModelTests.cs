using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Corpus;
using MLNetPeft.Generation;
using MLNetPeft.Training.LanguageModeling;

namespace MLNetPeft.BaseModel.Tests;

/// <summary>The committed base model: it ships with the build output, loads, and is actually pretrained.</summary>
public class BundledModelTests
{
    [Fact]
    public void ShipsLoadsAndPredictsHeldOutTextWell()
    {
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        Assert.Equal(BaseModelRecipe.VocabSize, model.Config.VocabSize);
        Assert.True(model.ParameterCount() < 5_000_000);

        var world = BaseModelRecipe.World();
        var validation = TokenBlocks.Pack(
            CorpusGenerator.Documents(world, 120, BaseModelRecipe.ValidationDocumentsSeed).Select(d => tokenizer.Encode(d, addSpecialTokens: false)),
            BaseModelRecipe.BlockSize, tokenizer.EosId!.Value);
        double loss = LanguageModelTrainer.Evaluate(model, validation, 8);
        // A uniform guess over 2048 tokens has loss ln 2048 = 7.6.
        Assert.True(loss < 1.5, $"validation loss {loss:F3}");
    }

    [Fact]
    public void ContinuesArithmeticAndCountingFromThePrompt()
    {
        using var model = BundledBaseModel.Load();
        var generator = new TextGenerator(model, BundledBaseModel.LoadTokenizer());
        var counted = generator.Generate("Count from 11 to 16:", new GenerationOptions { MaxNewTokens = 16, StopStrings = ["."] });
        Assert.StartsWith(" 11, 12, 13, 14, 15, 16", counted.Text);
    }

    [Fact]
    public void KnowsTheFactsOfItsCorpusButNotThoseOfTheKnowledgeBase()
    {
        using var model = BundledBaseModel.Load();
        var generator = new TextGenerator(model, BundledBaseModel.LoadTokenizer());
        var world = BaseModelRecipe.World();
        double Accuracy(IReadOnlyList<World.Person> people)
        {
            var answers = generator.Generate(people.Select(p => $"Q: Where does {p.Name} live? A:").ToList(), new GenerationOptions { MaxNewTokens = 4, StopStrings = ["."] });
            return answers.Zip(people).Count(a => a.First.Text.Trim() == a.Second.Town) / (double)people.Count;
        }
        double known = Accuracy(world.People.Take(60).ToList());
        double unseen = Accuracy(world.KnowledgeBasePeople);
        Assert.True(known >= 0.9, $"towns of corpus people: {known:P0}");
        // 12 towns: guessing gives about 8 %. Knowledge-base facts must come from retrieval, not from the weights.
        Assert.True(unseen <= 0.3, $"towns of knowledge-base people: {unseen:P0}");
    }
}
