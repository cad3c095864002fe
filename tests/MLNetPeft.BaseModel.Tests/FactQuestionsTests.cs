using MLNetPeft.BaseModel.Corpus;
using MLNetPeft.BaseModel.Tasks;
using MLNetPeft.BaseModel.World;

namespace MLNetPeft.BaseModel.Tests;

public class FactQuestionsTests
{
    /// <summary>
    /// A held-out phrasing is never seen in training if one of its literal pieces (the text between {name} and {pet})
    /// occurs in no training text: every question made from it contains that piece.
    /// </summary>
    [Fact]
    public void HeldOutPhrasingsOccurInNoTrainingText()
    {
        var world = BaseModelRecipe.World();
        var corpus = string.Join("\n", CorpusGenerator.Documents(world, BaseModelRecipe.TrainingDocuments, BaseModelRecipe.TrainingDocumentsSeed));
        var instructions = string.Join("\n", InstructionTasks.Generate(world.People, 6, 1).Select(e => e.Prompt));
        var training = string.Join("\n", FactQuestions.TrainingTemplates.SelectMany(t => t));
        foreach (var template in FactQuestions.HeldOutTemplates.SelectMany(t => t))
        {
            var pieces = template.Split(["{name}", "{pet}"], StringSplitOptions.RemoveEmptyEntries);
            Assert.True(pieces.Any(piece => !corpus.Contains(piece, StringComparison.Ordinal) && !instructions.Contains(piece, StringComparison.Ordinal)
                && !training.Contains(piece, StringComparison.Ordinal)), $"every piece of the held-out phrasing '{template}' occurs in some training text");
        }
        // The check has teeth: a training phrasing fails it.
        Assert.All(FactQuestions.TrainingTemplates[0][0].Split("{name}", StringSplitOptions.RemoveEmptyEntries), piece => Assert.Contains(piece, training));
    }

    [Fact]
    public void QuestionsAskForTheFactTheDocumentStates()
    {
        var world = BaseModelRecipe.World();
        var people = world.KnowledgeBasePeople;
        var heldOut = FactQuestions.HeldOut(people);
        Assert.Equal(people.Count * FactQuestions.HeldOutTemplates.Sum(t => t.Count), heldOut.Count);
        foreach (var q in heldOut)
        {
            var person = people.Single(p => p.Name == q.Subject);
            Assert.Contains(q.Subject, q.Question);
            Assert.DoesNotContain("{", q.Question);
            Assert.Contains(q.Answer, FactQuestions.Document(person));
        }
        Assert.Equal(FactQuestions.FactNames.Count, heldOut.Select(q => q.Fact).Distinct().Count());
        var training = FactQuestions.Training(people, 4, 9);
        Assert.Equal(training, FactQuestions.Training(people, 4, 9));
        Assert.Empty(training.Select(q => q.Question).Intersect(heldOut.Select(q => q.Question)));
        Assert.Equal(CorpusGenerator.KnowledgeBase(world), string.Concat(people.Select(p => FactQuestions.Document(p) + "\n\n")));
    }

    [Fact]
    public void RedrawnPeopleKeepTheirNamesAndGetNewFacts()
    {
        var people = BaseModelRecipe.World().People;
        var redrawn = SyntheticWorld.Redraw(people, 11);
        Assert.Equal(people.Select(p => p.Name), redrawn.Select(p => p.Name));
        Assert.Equal(redrawn, SyntheticWorld.Redraw(people, 11));
        Assert.All(redrawn, p => Assert.Contains(p.Friend, people.Select(x => x.Name)));
        Assert.All(redrawn, p => Assert.NotEqual(p.Name, p.Sibling));
        // Drawn again, a fact keeps its old value about as often as chance allows (1 in 12 towns).
        double sameTown = people.Zip(redrawn).Count(x => x.First.Town == x.Second.Town) / (double)people.Count;
        Assert.InRange(sameTown, 0.02, 0.16);
        Assert.Throws<ArgumentException>(() => SyntheticWorld.Redraw(people.Take(1).ToList(), 1));
    }

    [Theory]
    [InlineData(" Tolvan.", "Tolvan", true)]
    [InlineData("tolvan", "Tolvan", true)]
    [InlineData("  42 ", "42", true)]
    [InlineData("Tolvan and Brisk", "Tolvan", false)]
    [InlineData("", "Tolvan", false)]
    [InlineData(null, "Tolvan", false)]
    public void ExactMatchNormalisesOnlySpacePunctuationAndCase(string? answer, string expected, bool match) =>
        Assert.Equal(match, FactQuestions.IsExactMatch(answer, expected));
}
