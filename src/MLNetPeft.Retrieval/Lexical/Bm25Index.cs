using Lucene.Net.Analysis;
using Lucene.Net.Analysis.En;
using Lucene.Net.Analysis.TokenAttributes;
using Lucene.Net.Documents;
using Lucene.Net.Index;
using Lucene.Net.Search;
using Lucene.Net.Search.Similarities;
using Lucene.Net.Store;
using Lucene.Net.Util;
using MLNetPeft.Retrieval.Evaluation;
using LuceneDirectory = Lucene.Net.Store.Directory;

namespace MLNetPeft.Retrieval.Lexical;

/// <summary>Settings of a <see cref="Bm25Index"/>: BM25's k1 and b (Lucene's and Anserini's defaults).</summary>
public sealed class Bm25Options
{
    /// <summary>Term-frequency saturation (BM25 k1).</summary>
    public float K1 { get; set; } = 1.2f;

    /// <summary>Document-length normalisation (BM25 b), 0 to 1.</summary>
    public float B { get; set; } = 0.75f;

    internal void Validate()
    {
        if (!(K1 >= 0) || !float.IsFinite(K1)) throw new ArgumentOutOfRangeException(nameof(K1), K1, "must be a finite number ≥ 0");
        if (!(B is >= 0 and <= 1)) throw new ArgumentOutOfRangeException(nameof(B), B, "must be in [0, 1]");
    }
}

/// <summary>
/// Lexical search with Lucene.Net 4.8 and BM25 (<see cref="BM25Similarity"/> set on the writer and on the searcher:
/// Lucene 4.8 scores with TF-IDF otherwise). Text is analysed with Lucene's <see cref="EnglishAnalyzer"/> (standard
/// tokenizer, possessives, lower case, English stop words, Porter stemming), the setting of BEIR's and Anserini's
/// BM25 baselines. A query is the bag of its analysed terms (any term may match; repeated terms weigh more).
/// The index lives in memory or in a folder (<see cref="Open"/>).
/// </summary>
public sealed class Bm25Index : IDisposable
{
    private const string IdField = "id", TextField = "text";
    private static readonly LuceneVersion Version = LuceneVersion.LUCENE_48;

    private readonly LuceneDirectory _directory;
    private readonly Analyzer _analyzer = new EnglishAnalyzer(Version);
    private readonly BM25Similarity _similarity;
    private readonly IndexWriter _writer;
    private readonly object _gate = new();
    private DirectoryReader? _reader;
    private bool _disposed;

    private Bm25Index(LuceneDirectory directory, Bm25Options? options)
    {
        Options = options ?? new Bm25Options();
        Options.Validate();
        _directory = directory;
        _similarity = new BM25Similarity(Options.K1, Options.B);
        _writer = new IndexWriter(directory, new IndexWriterConfig(Version, _analyzer) { Similarity = _similarity, OpenMode = OpenMode.CREATE_OR_APPEND });
    }

    public Bm25Options Options { get; }

    /// <summary>An index held in memory.</summary>
    public static Bm25Index InMemory(Bm25Options? options = null) => new(new RAMDirectory(), options);

    /// <summary>An index in <paramref name="folder"/> (created when missing; documents already there stay).</summary>
    public static Bm25Index Open(string folder, Bm25Options? options = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        System.IO.Directory.CreateDirectory(folder);
        return new Bm25Index(FSDirectory.Open(folder), options);
    }

    /// <summary>Documents in the index.</summary>
    public int Count
    {
        get { lock (_gate) return Reader().NumDocs; }
    }

    /// <summary>Adds documents, replacing any with the same id; searchable once this returns.</summary>
    public void AddOrReplace(IEnumerable<(string Id, string Text)> documents)
    {
        ArgumentNullException.ThrowIfNull(documents);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            foreach (var (id, text) in documents)
            {
                if (string.IsNullOrEmpty(id)) throw new ArgumentException("A document has no id.", nameof(documents));
                ArgumentNullException.ThrowIfNull(text, nameof(documents));
                var document = new Document { new StringField(IdField, id, Field.Store.YES), new TextField(TextField, text, Field.Store.NO) };
                _writer.UpdateDocument(new Term(IdField, id), document);
            }
            _writer.Commit();
            _reader?.Dispose();
            _reader = null;
        }
    }

    /// <summary>Removes the documents with these ids (ids not in the index are ignored).</summary>
    public void Delete(IEnumerable<string> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _writer.DeleteDocuments([.. ids.Select(id => new Term(IdField, id))]);
            _writer.Commit();
            _reader?.Dispose();
            _reader = null;
        }
    }

    /// <summary>The analysed terms of <paramref name="text"/>, as the index sees them.</summary>
    public IReadOnlyList<string> Terms(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var terms = new List<string>();
        using var stream = _analyzer.GetTokenStream(TextField, text);
        var term = stream.AddAttribute<ICharTermAttribute>();
        stream.Reset();
        while (stream.IncrementToken()) terms.Add(term.ToString());
        stream.End();
        return terms;
    }

    /// <summary>The <paramref name="top"/> best documents for <paramref name="query"/> by BM25 score, best first (empty when no term matches).</summary>
    public IReadOnlyList<RankedDocument> Search(string query, int top)
    {
        ArgumentNullException.ThrowIfNull(query);
        ArgumentOutOfRangeException.ThrowIfLessThan(top, 1);
        var terms = Terms(query);
        if (terms.Count == 0) return [];
        var boolean = new BooleanQuery();
        foreach (var t in terms.Take(BooleanQuery.MaxClauseCount)) boolean.Add(new TermQuery(new Term(TextField, t)), Occur.SHOULD);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var searcher = new IndexSearcher(Reader()) { Similarity = _similarity };
            var hits = searcher.Search(boolean, top).ScoreDocs;
            return hits.Select(h => new RankedDocument(searcher.Doc(h.Doc).Get(IdField), h.Score)).ToList();
        }
    }

    private DirectoryReader Reader() => _reader ??= DirectoryReader.Open(_writer, applyAllDeletes: true);

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            _reader?.Dispose();
            _writer.Dispose();
            _analyzer.Dispose();
            _directory.Dispose();
        }
    }
}
