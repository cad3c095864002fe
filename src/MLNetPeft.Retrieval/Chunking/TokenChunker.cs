using System.Text.RegularExpressions;
using MLNetPeft.Tokenization;

namespace MLNetPeft.Retrieval.Chunking;

/// <summary>A piece of a document: its source document's id, its place in it, its text and its token count.</summary>
public sealed record TextChunk(string DocumentId, int Index, string Text, int StartChar, int Tokens)
{
    /// <summary>An id for the chunk that names its document: "documentId#index".</summary>
    public string Id => $"{DocumentId}#{Index}";
}

/// <summary>
/// Cuts long documents into chunks of at most <c>maxTokens</c> tokens of a tokenizer, each starting with the last
/// <c>overlapTokens</c> tokens' worth of words of the one before, so a passage cut at a border is still whole in one
/// chunk. Chunks end at word borders (whitespace) and their text is the document's own characters; a token count is
/// the sum of the words' counts (each word encoded alone, without special tokens), and a single word longer than the
/// limit becomes a chunk of its own.
/// </summary>
public sealed class TokenChunker
{
    private static readonly Regex Word = new(@"\S+", RegexOptions.Compiled, TimeSpan.FromSeconds(2));
    private readonly TextTokenizer _tokenizer;

    public TokenChunker(TextTokenizer tokenizer, int maxTokens = 256, int overlapTokens = 32)
    {
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        if (maxTokens < 1) throw new ArgumentOutOfRangeException(nameof(maxTokens), maxTokens, "must be at least 1");
        if (overlapTokens < 0 || overlapTokens >= maxTokens) throw new ArgumentOutOfRangeException(nameof(overlapTokens), overlapTokens, $"must be in [0, {maxTokens - 1}] (below maxTokens)");
        MaxTokens = maxTokens;
        OverlapTokens = overlapTokens;
    }

    public int MaxTokens { get; }
    public int OverlapTokens { get; }

    /// <summary>The chunks of one document, in order (none for a text without words).</summary>
    public IReadOnlyList<TextChunk> Chunk(string documentId, string text)
    {
        ArgumentException.ThrowIfNullOrEmpty(documentId);
        ArgumentNullException.ThrowIfNull(text);
        var words = Word.Matches(text).Select(m => (m.Index, m.Length, Tokens: Math.Max(1, _tokenizer.Encode(m.Value, addSpecialTokens: false).Count))).ToList();
        var chunks = new List<TextChunk>();
        int start = 0;
        while (start < words.Count)
        {
            int end = start, tokens = 0;
            while (end < words.Count && (end == start || tokens + words[end].Tokens <= MaxTokens)) tokens += words[end++].Tokens;
            int from = words[start].Index, to = words[end - 1].Index + words[end - 1].Length;
            chunks.Add(new TextChunk(documentId, chunks.Count, text[from..to], from, tokens));
            if (end == words.Count) break;
            // The next chunk repeats the last words of this one, up to the overlap, and always moves forward.
            int next = end, overlap = 0;
            while (next - 1 > start && overlap + words[next - 1].Tokens <= OverlapTokens) overlap += words[--next].Tokens;
            start = next;
        }
        return chunks;
    }

    /// <summary>The chunks of many documents, document by document.</summary>
    public IEnumerable<TextChunk> Chunk(IEnumerable<(string Id, string Text)> documents)
    {
        ArgumentNullException.ThrowIfNull(documents);
        foreach (var (id, text) in documents)
            foreach (var chunk in Chunk(id, text)) yield return chunk;
    }
}
