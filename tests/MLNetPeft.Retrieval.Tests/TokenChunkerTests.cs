using MLNetPeft.Retrieval.Chunking;
using MLNetPeft.Tokenization;

namespace MLNetPeft.Retrieval.Tests;

public class TokenChunkerTests
{
    private static readonly TextTokenizer Tokenizer = TextTokenizer.FromTiktoken("gpt2");

    [Fact]
    public void ChunksStayUnderTheLimitOverlapAndCoverTheWholeDocument()
    {
        var words = Enumerable.Range(0, 200).Select(i => i % 7 == 0 ? $"extraordinarily{i}" : $"w{i}").ToList();
        string text = "  " + string.Join(" ", words);
        var chunker = new TokenChunker(Tokenizer, maxTokens: 40, overlapTokens: 10);
        var chunks = chunker.Chunk("doc-1", text);
        Assert.True(chunks.Count > 5);
        Assert.All(chunks, c => Assert.True(c.Tokens <= 40, $"chunk {c.Index} has {c.Tokens} tokens"));
        Assert.All(chunks, c => Assert.Equal("doc-1", c.DocumentId));
        Assert.Equal(Enumerable.Range(0, chunks.Count), chunks.Select(c => c.Index));
        Assert.Equal("doc-1#3", chunks[3].Id);
        // Each chunk is the document's own text at its offset, and the chunks together hold every word.
        Assert.All(chunks, c => Assert.Equal(c.Text, text.Substring(c.StartChar, c.Text.Length)));
        Assert.Equal(words, chunks.SelectMany(c => c.Text.Split(' ')).Distinct().ToList());
        for (int i = 1; i < chunks.Count; i++)
        {
            var previous = chunks[i - 1].Text.Split(' ');
            var current = chunks[i].Text.Split(' ');
            int shared = previous.Length - Array.IndexOf(previous, current[0]);
            Assert.True(Array.IndexOf(previous, current[0]) > 0, "each chunk starts inside the one before (overlap) and moves forward");
            int sharedTokens = current.Take(shared).Sum(w => Tokenizer.Encode(w, addSpecialTokens: false).Count);
            Assert.InRange(sharedTokens, 1, 10);
        }
    }

    [Fact]
    public void ShortTextsAreOneChunkAndEmptyTextsNone()
    {
        var chunker = new TokenChunker(Tokenizer, maxTokens: 64, overlapTokens: 8);
        var one = chunker.Chunk("d", "A short passage.");
        Assert.Equal("A short passage.", Assert.Single(one).Text);
        Assert.Empty(chunker.Chunk("d", "   \n "));
        Assert.Equal(["a#0", "b#0"], chunker.Chunk([("a", "x y"), ("b", "z")]).Select(c => c.Id));
    }

    [Fact]
    public void AWordLongerThanTheLimitIsAChunkOfItsOwnAndBadSettingsAreNamed()
    {
        var chunker = new TokenChunker(Tokenizer, maxTokens: 3, overlapTokens: 1);
        var chunks = chunker.Chunk("d", "supercalifragilisticexpialidocious is long");
        Assert.Equal("supercalifragilisticexpialidocious", chunks[0].Text);
        Assert.True(chunks[0].Tokens > 3);
        Assert.Equal("overlapTokens", Assert.Throws<ArgumentOutOfRangeException>(() => new TokenChunker(Tokenizer, 10, 10)).ParamName);
        Assert.Equal("maxTokens", Assert.Throws<ArgumentOutOfRangeException>(() => new TokenChunker(Tokenizer, 0, 0)).ParamName);
    }
}
