using MLNetPeft.MiniLM;
using MLNetPeft.Retrieval.Chunking;
using MLNetPeft.Retrieval.Embeddings;
using MLNetPeft.Retrieval.Retrievers;

namespace MLNetPeft.Retrieval.Tests;

public sealed class KnowledgeBaseTests : IDisposable
{
    private static readonly (string, string)[] Documents =
    [
        ("volcano", "Mount Etna is an active volcano on the east coast of Sicily; its eruptions send lava down towards Catania."),
        ("violin", "A violin has four strings tuned in fifths and is played with a bow made of horsehair."),
        ("bread", "Sourdough bread rises with wild yeast and lactic acid bacteria instead of baker's yeast."),
        ("orbit", "The International Space Station circles the Earth about every ninety minutes at an altitude of 400 km."),
        ("tax", "Value added tax is charged at each step of production on the value a business adds."),
    ];

    private readonly Architectures.BertModel _encoder = AllMiniLmL6V2.Load();
    private readonly SentenceEmbedder _embedder;

    public KnowledgeBaseTests() => _embedder = new SentenceEmbedder(_encoder, AllMiniLmL6V2.LoadTokenizer());

    public void Dispose() => _encoder.Dispose();

    [Theory]
    [InlineData(RetrievalMode.Dense)]
    [InlineData(RetrievalMode.Lexical)]
    [InlineData(RetrievalMode.Hybrid)]
    public void EachModeFindsThePassageAQuestionIsAbout(RetrievalMode mode)
    {
        using var kb = KnowledgeBase.Build(_embedder, Documents);
        string[] questions = ["Which volcano erupts near Catania?", "How many strings does a violin have?", "What makes sourdough rise?",
            "How long does the space station take to orbit the Earth?", "How is value added tax charged?"];
        var results = kb.Retrieve(questions, top: 3, mode);
        Assert.Equal(["volcano", "violin", "bread", "orbit", "tax"], results.Select(r => r[0].DocumentId));
        // BM25 returns only passages that share a word with the query; dense search always fills top.
        Assert.All(results, r => Assert.InRange(r.Count, mode == RetrievalMode.Lexical ? 1 : 3, 3));
        Assert.All(results, r => Assert.Equal(r.Select(p => p.Score).OrderDescending(), r.Select(p => p.Score)));
    }

    [Fact]
    public void ChunkedDocumentsKeepTheirSourceAndASavedBaseRetrievesIdentically()
    {
        var longText = string.Join(" ", Enumerable.Range(0, 12).Select(i => $"Section {i} talks about topic number {i} in some detail."));
        var chunker = new TokenChunker(_embedder.Tokenizer, maxTokens: 24, overlapTokens: 6);
        using var kb = KnowledgeBase.Build(_embedder, [.. Documents, ("long", longText)], chunker);
        Assert.True(kb.Count > Documents.Length + 3);
        var hit = kb.Retrieve(["Section 7 talks about topic number 7"], top: 1, RetrievalMode.Lexical)[0][0];
        Assert.Equal("long", hit.DocumentId);
        Assert.StartsWith("long#", hit.Id);
        Assert.Contains("Section 7", hit.Text);

        var path = Path.Combine(Path.GetTempPath(), $"mlnetpeft-kb-{Guid.NewGuid():N}.safetensors");
        try
        {
            kb.Save(path);
            using var loaded = KnowledgeBase.Load(path, _embedder);
            Assert.Equal(kb.Count, loaded.Count);
            string[] queries = ["volcano lava", "bow and strings", "topic number 3"];
            // Same passages in the same order; cosines to 1e-6, since the BLAS product may split the rows among a
            // different number of threads from one call to the next (MKL's dynamic threading under load) and round the last bit differently.
            foreach (var mode in Enum.GetValues<RetrievalMode>())
                Assert.Equal(kb.Retrieve(queries, 4, mode).Select(r => r.Select(p => (p.Id, p.Text, Math.Round(p.Score, 6)))).SelectMany(x => x),
                    loaded.Retrieve(queries, 4, mode).Select(r => r.Select(p => (p.Id, p.Text, Math.Round(p.Score, 6)))).SelectMany(x => x));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task AKnowledgeBaseInACallersCollectionReopensWithTheSameResultsAndReplacesWhatItHeld()
    {
        using var built = KnowledgeBase.Build(_embedder, Documents);
        using var collection = new VectorStores.InMemoryVectorCollection<string, KnowledgeBase.StoredPassage>("kb", KnowledgeBase.Definition(_embedder.Dimension));
        await collection.EnsureCollectionExistsAsync();
        await collection.UpsertAsync(new KnowledgeBase.StoredPassage { Id = "stale", DocumentId = "stale", Text = "an old passage", Vector = new float[_embedder.Dimension] });
        using (await KnowledgeBase.BuildAsync(_embedder, Documents, collection)) { }
        Assert.Null(await collection.GetAsync("stale"));
        // Opened again (as a saved pipeline over a database does), the BM25 index is read back from the collection.
        using var reopened = await KnowledgeBase.OpenAsync(_embedder, collection);
        Assert.Equal(Documents.Length, reopened.Count);
        string[] queries = ["volcano lava", "bow and strings", "wild yeast"];
        foreach (var mode in Enum.GetValues<RetrievalMode>())
            Assert.Equal(built.Retrieve(queries, 3, mode).SelectMany(r => r.Select(p => (p.Id, p.Text, Math.Round(p.Score, 5)))),
                reopened.Retrieve(queries, 3, mode).SelectMany(r => r.Select(p => (p.Id, p.Text, Math.Round(p.Score, 5)))));
        Assert.Contains("'missing'", (await Assert.ThrowsAsync<Microsoft.Extensions.VectorData.VectorStoreException>(() =>
            KnowledgeBase.OpenAsync(_embedder, new VectorStores.InMemoryVectorCollection<string, KnowledgeBase.StoredPassage>("missing", KnowledgeBase.Definition(_embedder.Dimension))))).Message);
    }

    [Fact]
    public void AnEmptyCorpusOrARepeatedIdIsRefused()
    {
        Assert.Contains("empty", Assert.Throws<ArgumentException>(() => KnowledgeBase.Build(_embedder, [])).Message);
        Assert.Contains("empty", Assert.Throws<ArgumentException>(() => KnowledgeBase.Build(_embedder, [("a", " ")])).Message);
        Assert.Contains("'a'", Assert.Throws<ArgumentException>(() => KnowledgeBase.Build(_embedder, [("a", "x"), ("a", "y")])).Message);
    }
}
