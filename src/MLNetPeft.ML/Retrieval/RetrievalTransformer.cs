using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.ML.Persistence;
using MLNetPeft.ML.Retrieval;
using MLNetPeft.Retrieval.Retrievers;

[assembly: LoadableClass(typeof(RetrievalTransformer), null, typeof(SignatureLoadModel), "MLNetPeft Retrieval", RetrievalTransformer.LoaderSignature)]

namespace MLNetPeft.ML.Retrieval;

/// <summary>
/// Retrieves passages of a knowledge base for each row's query: the passages' texts, ids and scores as three vector
/// columns, best first (fewer than Top where BM25 finds fewer passages that share a word with the query). Saved with
/// <c>mlContext.Model.Save</c>: the knowledge base (passages and their vectors) inside the zip, or referred to by file
/// path and SHA-256, or by connection-string name and table for pgvector (<see cref="KnowledgeBaseStorage"/>); the
/// encoder as <see cref="TextEmbeddingTransformer"/> keeps it.
/// </summary>
public sealed class RetrievalTransformer : RowToRowTransformerBase, IDisposable
{
    internal const string LoaderSignature = "MLNetPeftRetrievalXf";
    private const string ModelSignature = "PEFTRETR";
    private const string KnowledgeBaseFile = "knowledge-base.safetensors", KnowledgeBaseStreams = "KnowledgeBase.";

    private readonly ModelPackage _package;
    private readonly OpenedKnowledgeBase _knowledgeBase;
    private readonly StoredFolder? _files;
    private readonly Settings _settings;
    private readonly bool _ownsEncoder;

    internal RetrievalTransformer(IHostEnvironment env, OpenedKnowledgeBase knowledgeBase, ModelPackage package, StoredFolder? files, Settings settings, bool ownsEncoder)
        : base(Contracts.CheckRef(env, nameof(env)).Register(nameof(RetrievalTransformer)))
    {
        _knowledgeBase = knowledgeBase;
        _package = package;
        _files = files;
        _settings = settings;
        _ownsEncoder = ownsEncoder;
    }

    /// <summary>The stage's settings; <paramref name="Location"/> is null when the knowledge base is inside the zip (and in zips written before it existed).</summary>
    internal sealed record Settings(string Query, string Passages, string PassageIds, string Scores, int Top, RetrievalMode Mode, EmbedderSettings Embedder,
        KnowledgeBaseLocation? Location = null);

    /// <summary>The passages, their vectors and the BM25 index (also usable without ML.NET).</summary>
    public KnowledgeBase KnowledgeBase => _knowledgeBase.KnowledgeBase;

    /// <summary>Where the knowledge base is kept.</summary>
    public KnowledgeBaseStorage Storage => _settings.Location?.Kind ?? KnowledgeBaseStorage.InsideZip;
    public string QueryColumnName => _settings.Query;
    public int Top => _settings.Top;
    public RetrievalMode Mode => _settings.Mode;

    /// <summary>Saves the knowledge base into a folder the transformer keeps for its zip.</summary>
    internal static StoredFolder Store(KnowledgeBase knowledgeBase) => ModelFiles.WithTempFolder(folder =>
    {
        knowledgeBase.Save(Path.Combine(folder, KnowledgeBaseFile));
        return StoredFolder.Take(folder);
    });

    private static VersionInfo GetVersionInfo() => ModelVersions.Of<RetrievalTransformer>(ModelSignature, LoaderSignature, 0x00010001);

    protected override void SaveModel(ModelSaveContext ctx)
    {
        ctx.CheckAtModel();
        ctx.SetVersionInfo(GetVersionInfo());
        CheckedSettings.Write(ctx, _settings);
        _package.Save(ctx);
        _files?.Save(ctx, KnowledgeBaseStreams);
    }

    private static RetrievalTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        Contracts.CheckValue(env, nameof(env));
        ctx.CheckAtModel(GetVersionInfo());
        var s = CheckedSettings.Read<Settings>(ctx, "retrieval");
        if (s.Embedder is not { IsValid: true } || s.Top is < 1 or > 1000 || !Enum.IsDefined(s.Mode) || s.Location is { IsValid: false } ||
            new[] { s.Query, s.Passages, s.PassageIds, s.Scores }.Any(string.IsNullOrEmpty))
            throw new InvalidDataException("The model zip's retrieval settings are out of range; it is corrupt.");
        var package = ModelPackage.Load(ctx);
        StoredFolder? files = null;
        try
        {
            if (s.Location is null) files = StoredFolder.Load(ctx, KnowledgeBaseStreams, "knowledge base");
            var embedder = EmbedderPackage.Load(package, s.Embedder);
            try
            {
                var knowledgeBase = s.Location is { } location ? OpenedKnowledgeBase.Open(location, embedder)
                    : new OpenedKnowledgeBase(KnowledgeBase.Load(Path.Combine(files!.Path, KnowledgeBaseFile), embedder), store: null);
                return new RetrievalTransformer(env, knowledgeBase, package, files, s, ownsEncoder: true);
            }
            catch
            {
                embedder.Encoder.Dispose();
                throw;
            }
        }
        catch
        {
            files?.Dispose();
            package.Dispose();
            throw;
        }
    }

    protected override IRowMapper MakeRowMapper(DataViewSchema schema) => new Mapper(this, schema);

    /// <summary>Disposes the knowledge base (and its database connections), the encoder when this transformer loaded it, and the stored files.</summary>
    public void Dispose()
    {
        _knowledgeBase.Dispose();
        if (_ownsEncoder) KnowledgeBase.Embedder.Encoder.Dispose();
        _files?.Dispose();
        _package.Dispose();
    }

    private sealed class Mapper : MapperBase
    {
        private readonly RetrievalTransformer _owner;
        private readonly int _query;

        public Mapper(RetrievalTransformer owner, DataViewSchema schema) : base(owner.Host, schema, owner)
        {
            _owner = owner;
            TextColumns.Require(schema, owner._settings.Query, "query", Host);
            _query = schema[owner._settings.Query].Index;
        }

        protected override DataViewSchema.DetachedColumn[] GetOutputColumnsCore() =>
        [
            new(_owner._settings.Passages, new VectorDataViewType(TextDataViewType.Instance)),
            new(_owner._settings.PassageIds, new VectorDataViewType(TextDataViewType.Instance)),
            new(_owner._settings.Scores, new VectorDataViewType(NumberDataViewType.Single)),
        ];

        protected override Delegate MakeGetter(DataViewRow input, int iinfo, Func<int, bool> activeOutput, out Action disposer)
        {
            disposer = null!;
            var getQuery = input.GetGetter<ReadOnlyMemory<char>>(input.Schema[_query]);
            // The three columns of a row share one retrieval.
            long cachedPosition = -1;
            IReadOnlyList<RetrievedPassage> passages = [];
            ReadOnlyMemory<char> query = default;
            IReadOnlyList<RetrievedPassage> Passages()
            {
                if (cachedPosition != input.Position)
                {
                    getQuery(ref query);
                    passages = _owner.KnowledgeBase.Retrieve([query.ToString()], _owner._settings.Top, _owner._settings.Mode)[0];
                    cachedPosition = input.Position;
                }
                return passages;
            }
            if (iinfo == 2)
                return (ValueGetter<VBuffer<float>>)((ref VBuffer<float> value) => Fill(ref value, Passages(), p => (float)p.Score));
            Func<RetrievedPassage, string> text = iinfo == 0 ? p => p.Text : p => p.Id;
            return (ValueGetter<VBuffer<ReadOnlyMemory<char>>>)((ref VBuffer<ReadOnlyMemory<char>> value) => Fill(ref value, Passages(), p => text(p).AsMemory()));
        }

        private static void Fill<T>(ref VBuffer<T> value, IReadOnlyList<RetrievedPassage> passages, Func<RetrievedPassage, T> select)
        {
            var editor = VBufferEditor.Create(ref value, passages.Count);
            for (int i = 0; i < passages.Count; i++) editor.Values[i] = select(passages[i]);
            value = editor.Commit();
        }

        protected override Func<int, bool> GetDependenciesCore(Func<int, bool> activeOutput) =>
            col => col == _query && Enumerable.Range(0, 3).Any(activeOutput);

        protected override void SaveModel(ModelSaveContext ctx) => _owner.SaveModel(ctx);
    }
}
