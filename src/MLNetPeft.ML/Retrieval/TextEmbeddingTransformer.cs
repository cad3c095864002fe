using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.ML.Persistence;
using MLNetPeft.ML.Retrieval;
using MLNetPeft.Retrieval.Embeddings;
using MLNetPeft.Tokenization;

[assembly: LoadableClass(typeof(TextEmbeddingTransformer), null, typeof(SignatureLoadModel), "MLNetPeft Text Embedding", TextEmbeddingTransformer.LoaderSignature)]

namespace MLNetPeft.ML.Retrieval;

/// <summary>
/// Embeds a text column into a fixed-size <c>float</c> vector column with a BERT encoder (sentence-transformers'
/// mean pooling and L2 normalisation by default), usable as ML.NET features or for retrieval. Over a data view the
/// rows are embedded in batches read ahead of the cursor (rows of similar length together); a
/// <c>PredictionEngine</c> embeds one row at a time. Saved with <c>mlContext.Model.Save</c>: the bundled
/// all-MiniLM-L6-v2 by reference (package version and SHA-256), another encoder embedded in the zip or referenced.
/// </summary>
public sealed class TextEmbeddingTransformer : RowToRowTransformerBase, ITransformer, IDisposable
{
    internal const string LoaderSignature = "MLNetPeftTextEmbedXf";
    private const string ModelSignature = "PEFTEMBD";
    /// <summary>Rows read ahead and embedded together; within them the embedder batches by length.</summary>
    private const int ReadAhead = 256;

    private readonly ModelPackage _package;
    private readonly Settings _settings;
    private readonly bool _ownsEncoder;

    internal TextEmbeddingTransformer(IHostEnvironment env, SentenceEmbedder embedder, ModelPackage package, Settings settings, bool ownsEncoder)
        : base(Contracts.CheckRef(env, nameof(env)).Register(nameof(TextEmbeddingTransformer)))
    {
        Embedder = embedder;
        _package = package;
        _settings = settings;
        _ownsEncoder = ownsEncoder;
    }

    internal sealed record Settings(string Output, string Input, EmbedderSettings Embedder);

    public string OutputColumnName => _settings.Output;
    public string InputColumnName => _settings.Input;
    /// <summary>The encoder and its settings (also usable alone, e.g. as an <c>IEmbeddingGenerator</c> through <see cref="SentenceEmbeddingGenerator"/>).</summary>
    public SentenceEmbedder Embedder { get; }
    public int Dimension => Embedder.Dimension;

    /// <summary>Embeds <paramref name="input"/> in batches read ahead of the cursor.</summary>
    public new IDataView Transform(IDataView input)
    {
        Host.CheckValue(input, nameof(input));
        return new RowToRowMapperTransform(Host, input, new Mapper(this, input.Schema, input), schema => new Mapper(this, schema, null));
    }

    internal static void CheckInput(DataViewSchema schema, string column, IExceptionContext ectx) => TextColumns.Require(schema, column, "text", ectx);

    internal static SchemaShape OutputShape(SchemaShape input, string inputColumn, string outputColumn, IExceptionContext ectx)
    {
        TextColumns.Require(input, inputColumn, "text", ectx);
        var columns = input.ToDictionary(x => x.Name);
        columns[outputColumn] = new SchemaShape.Column(outputColumn, SchemaShape.Column.VectorKind.Vector, NumberDataViewType.Single, false);
        return new SchemaShape(columns.Values);
    }

    private static VersionInfo GetVersionInfo() => ModelVersions.Of<TextEmbeddingTransformer>(ModelSignature, LoaderSignature, 0x00010001);

    protected override void SaveModel(ModelSaveContext ctx)
    {
        ctx.CheckAtModel();
        ctx.SetVersionInfo(GetVersionInfo());
        CheckedSettings.Write(ctx, _settings);
        _package.Save(ctx);
    }

    private static TextEmbeddingTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        Contracts.CheckValue(env, nameof(env));
        ctx.CheckAtModel(GetVersionInfo());
        var s = CheckedSettings.Read<Settings>(ctx, "text embedding");
        if (s.Embedder is not { IsValid: true } || string.IsNullOrEmpty(s.Output) || string.IsNullOrEmpty(s.Input))
            throw new InvalidDataException("The model zip's text embedding settings are out of range; it is corrupt.");
        var package = ModelPackage.Load(ctx);
        try
        {
            return new TextEmbeddingTransformer(env, EmbedderPackage.Load(package, s.Embedder), package, s, ownsEncoder: true);
        }
        catch
        {
            package.Dispose();
            throw;
        }
    }

    protected override IRowMapper MakeRowMapper(DataViewSchema schema) => new Mapper(this, schema, null);

    /// <summary>Disposes the encoder when this transformer loaded it (a caller's encoder stays the caller's) and the stored files.</summary>
    public void Dispose()
    {
        if (_ownsEncoder) Embedder.Encoder.Dispose();
        _package.Dispose();
    }

    private sealed class Mapper : MapperBase
    {
        private readonly TextEmbeddingTransformer _owner;
        private readonly int _input;
        private readonly IDataView? _source;

        /// <param name="source">The view the rows come from, to read ahead of the cursor in; null: one row at a time.</param>
        public Mapper(TextEmbeddingTransformer owner, DataViewSchema schema, IDataView? source) : base(owner.Host, schema, owner)
        {
            _owner = owner;
            CheckInput(schema, owner._settings.Input, Host);
            _input = schema[owner._settings.Input].Index;
            _source = source;
        }

        protected override DataViewSchema.DetachedColumn[] GetOutputColumnsCore() =>
            [new(_owner._settings.Output, new VectorDataViewType(NumberDataViewType.Single, _owner.Dimension))];

        protected override Delegate MakeGetter(DataViewRow input, int iinfo, Func<int, bool> activeOutput, out Action disposer)
        {
            var getText = input.GetGetter<ReadOnlyMemory<char>>(input.Schema[_input]);
            var ahead = _source is null ? null : new ReadAheadBatches(_source, _input, _owner.Embedder);
            disposer = () => ahead?.Dispose();
            ReadOnlyMemory<char> text = default;
            return (ValueGetter<VBuffer<float>>)((ref VBuffer<float> value) =>
            {
                getText(ref text);
                var s = text.ToString();
                var vector = ahead?.Get(input.Position, s) ?? _owner.Embedder.Embed([s])[0];
                var editor = VBufferEditor.Create(ref value, vector.Length);
                vector.CopyTo(editor.Values);
                value = editor.Commit();
            });
        }

        protected override Func<int, bool> GetDependenciesCore(Func<int, bool> activeOutput) => col => activeOutput(0) && col == _input;

        protected override void SaveModel(ModelSaveContext ctx) => _owner.SaveModel(ctx);
    }

    /// <summary>
    /// Embeds the rows of a view <see cref="ReadAhead"/> at a time, from a second cursor that runs ahead of the one being
    /// read. A row is served from the batch only when its position and text match the read-ahead row (a shuffled or
    /// split cursor does not match): from the first mismatch on, rows are embedded one at a time.
    /// </summary>
    private sealed class ReadAheadBatches(IDataView source, int column, SentenceEmbedder embedder) : IDisposable
    {
        private DataViewRowCursor? _cursor;
        private ValueGetter<ReadOnlyMemory<char>>? _getText;
        private readonly Dictionary<long, (string Text, float[] Vector)> _batch = [];
        private bool _oneByOne;

        public float[]? Get(long position, string text)
        {
            if (_batch.TryGetValue(position, out var hit) && hit.Text == text) return hit.Vector;
            if (_oneByOne) return null;
            if (_cursor is null || _cursor.Position >= position)
            {
                _cursor?.Dispose();
                _cursor = source.GetRowCursor([source.Schema[column]]);
                _getText = _cursor.GetGetter<ReadOnlyMemory<char>>(source.Schema[column]);
            }
            while (_cursor.Position < position - 1 && _cursor.MoveNext()) { }
            var positions = new List<long>(ReadAhead);
            var texts = new List<string>(ReadAhead);
            ReadOnlyMemory<char> value = default;
            while (texts.Count < ReadAhead && _cursor.MoveNext())
            {
                _getText!(ref value);
                positions.Add(_cursor.Position);
                texts.Add(value.ToString());
            }
            _batch.Clear();
            var vectors = embedder.Embed(texts);
            for (int i = 0; i < texts.Count; i++) _batch[positions[i]] = (texts[i], vectors[i]);
            if (_batch.TryGetValue(position, out hit) && hit.Text == text) return hit.Vector;
            _oneByOne = true;
            Dispose();
            return null;
        }

        public void Dispose()
        {
            _cursor?.Dispose();
            _cursor = null;
        }
    }
}
