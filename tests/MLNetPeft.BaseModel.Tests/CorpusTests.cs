using System.Security.Cryptography;
using System.Text;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Corpus;
using MLNetPeft.BaseModel.Tokenizer;
using MLNetPeft.BaseModel.World;
using MLNetPeft.Tokenization;

namespace MLNetPeft.BaseModel.Tests;

public class CorpusTests
{
    private static string Hash(IEnumerable<string> documents) =>
        Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(string.Join("\u0001", documents))));

    [Fact]
    public void TheSameSeedGivesTheSameBytes()
    {
        var a = CorpusGenerator.Documents(new SyntheticWorld(7), 500, 1).ToList();
        var b = CorpusGenerator.Documents(new SyntheticWorld(7), 500, 1).ToList();
        Assert.Equal(Hash(a), Hash(b));
        Assert.Equal(CorpusGenerator.KnowledgeBase(new SyntheticWorld(7)), CorpusGenerator.KnowledgeBase(new SyntheticWorld(7)));
        Assert.NotEqual(Hash(a), Hash(CorpusGenerator.Documents(new SyntheticWorld(7), 500, 2)));
        Assert.NotEqual(Hash(a), Hash(CorpusGenerator.Documents(new SyntheticWorld(8), 500, 1)));
    }

    [Fact]
    public void TheCorpusHasEveryKindOfDocument()
    {
        var docs = CorpusGenerator.Documents(BaseModelRecipe.World(), 400, 1).ToList();
        Assert.Contains(docs, d => d.Contains(" plus ", StringComparison.Ordinal));
        Assert.Contains(docs, d => d.StartsWith("Count from", StringComparison.Ordinal));
        Assert.Contains(docs, d => d.Contains("sorted from small to large", StringComparison.Ordinal));
        Assert.Contains(docs, d => d.Contains("went home to", StringComparison.Ordinal));
        Assert.Contains(docs, d => d.StartsWith("Q: ", StringComparison.Ordinal));
        Assert.Contains(docs, d => d.Contains(" years old.", StringComparison.Ordinal));
        // Arithmetic in the corpus is right.
        foreach (var doc in docs.Where(d => d.Contains(" plus ", StringComparison.Ordinal)))
            foreach (var sentence in doc.Split(". ", StringSplitOptions.RemoveEmptyEntries).Where(s => s.Contains(" plus ", StringComparison.Ordinal)))
            {
                var w = sentence.TrimEnd('.').Split(' ');
                Assert.Equal(int.Parse(w[0]) + int.Parse(w[2]), int.Parse(w[4]));
            }
    }

    [Fact]
    public void KnowledgeBasePeopleNeverAppearInTheCorpus()
    {
        var world = BaseModelRecipe.World();
        var names = world.KnowledgeBasePeople.Select(p => p.Name).ToList();
        Assert.Equal(60, names.Count);
        Assert.Empty(names.Intersect(world.People.Select(p => p.Name)));
        var corpus = string.Join("\n", CorpusGenerator.Documents(world, 3000, BaseModelRecipe.TrainingDocumentsSeed));
        Assert.DoesNotContain(names, n => corpus.Contains(n, StringComparison.Ordinal));
        var knowledgeBase = CorpusGenerator.KnowledgeBase(world);
        Assert.All(world.KnowledgeBasePeople, p => Assert.Contains($"{p.Name} lives in {p.Town}.", knowledgeBase));
    }

    [Fact]
    public void BpeVocabularyIsDeterministicAndLoadsThroughMicrosoftMlTokenizers()
    {
        var docs = CorpusGenerator.Documents(BaseModelRecipe.World(), 800, 1).ToList();
        var (vocabulary, merges) = ByteLevelBpeTrainer.Train(docs, 600);
        var (again, mergesAgain) = ByteLevelBpeTrainer.Train(docs, 600);
        Assert.Equal(vocabulary, again);
        Assert.Equal(merges, mergesAgain);
        Assert.Equal(600, vocabulary.Count);
        Assert.Equal(ByteLevelBpeTrainer.EndOfText, vocabulary[^1]);

        using var dir = new TempFolder();
        ByteLevelBpeTrainer.Save(dir.Path, vocabulary, merges);
        var tokenizer = TextTokenizer.FromPretrained(dir.Path);
        Assert.Equal(599, tokenizer.EosId);
        foreach (var doc in docs.Take(50)) Assert.Equal(doc, tokenizer.Decode(tokenizer.Encode(doc)));
        // Frequent words become single tokens, and text is far shorter in tokens than in bytes.
        Assert.Single(tokenizer.Encode(" lives", addSpecialTokens: false));
        var sample = string.Join(" ", docs.Take(50));
        Assert.True(tokenizer.Encode(sample).Count < Encoding.UTF8.GetByteCount(sample) / 2);
    }
}
