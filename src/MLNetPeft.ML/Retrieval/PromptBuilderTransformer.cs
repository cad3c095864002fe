using System.Text;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.ML.Persistence;
using MLNetPeft.ML.Retrieval;
using MLNetPeft.Retrieval.Embeddings;

[assembly: LoadableClass(typeof(PromptBuilderTransformer), null, typeof(SignatureLoadModel), "MLNetPeft Prompt Builder", PromptBuilderTransformer.LoaderSignature)]

namespace MLNetPeft.ML.Retrieval;

/// <summary>
/// Builds each row's prompt from a template: the question, the retrieved passages as context, and in-context
/// demonstrations (fixed, random per row from a seed, or the nearest pool questions by embedding similarity). The text
/// goes into a new column for <c>GenerateText</c>. Saved with <c>mlContext.Model.Save</c> (templates and pool as
/// settings; for nearest-neighbour selection the encoder as <see cref="TextEmbeddingTransformer"/> keeps it).
/// </summary>
public sealed class PromptBuilderTransformer : RowToRowTransformerBase, IDisposable
{
    internal const string LoaderSignature = "MLNetPeftPromptBuildXf";
    private const string ModelSignature = "PEFTPRMT";

    private readonly Settings _settings;
    private readonly SentenceEmbedder? _embedder;
    private readonly ModelPackage? _package;
    private readonly bool _ownsEncoder;
    private readonly float[][]? _poolVectors;

    internal PromptBuilderTransformer(IHostEnvironment env, Settings settings, SentenceEmbedder? embedder, ModelPackage? package, bool ownsEncoder)
        : base(Contracts.CheckRef(env, nameof(env)).Register(nameof(PromptBuilderTransformer)))
    {
        _settings = settings;
        _embedder = embedder;
        _package = package;
        _ownsEncoder = ownsEncoder;
        if (settings.Selection == DemonstrationSelection.Nearest && settings.Count > 0)
            _poolVectors = embedder!.Embed(settings.Pool.Select(d => d.Question).ToList());
    }

    internal sealed record Settings(string Output, string Question, string? Passages, string Template, string DemonstrationTemplate, string PassageTemplate,
        IReadOnlyList<Demonstration> Pool, int Count, DemonstrationSelection Selection, int Seed, EmbedderSettings? Embedder);

    public string OutputColumnName => _settings.Output;

    /// <summary>The prompt for one question and its passages.</summary>
    public string Build(string question, IReadOnlyList<string> passages)
    {
        ArgumentNullException.ThrowIfNull(question);
        ArgumentNullException.ThrowIfNull(passages);
        var demonstrations = new StringBuilder();
        foreach (var d in Pick(question))
            demonstrations.Append(_settings.DemonstrationTemplate.Replace("{question}", d.Question, StringComparison.Ordinal).Replace("{answer}", d.Answer, StringComparison.Ordinal));
        var context = string.Join("\n", passages.Select((p, i) =>
            _settings.PassageTemplate.Replace("{index}", (i + 1).ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal).Replace("{passage}", p, StringComparison.Ordinal)));
        // One pass over the template, so that a question or passage that itself contains "{context}" is not filled in again.
        var result = new StringBuilder(_settings.Template.Length + context.Length + question.Length + demonstrations.Length);
        var template = _settings.Template.AsSpan();
        while (template.Length > 0)
        {
            int open = template.IndexOf('{');
            if (open < 0) { result.Append(template); break; }
            result.Append(template[..open]);
            template = template[open..];
            if (template.StartsWith("{question}")) { result.Append(question); template = template["{question}".Length..]; }
            else if (template.StartsWith("{context}")) { result.Append(context); template = template["{context}".Length..]; }
            else if (template.StartsWith("{demonstrations}")) { result.Append(demonstrations); template = template["{demonstrations}".Length..]; }
            else { result.Append('{'); template = template[1..]; }
        }
        return result.ToString();
    }

    private IEnumerable<Demonstration> Pick(string question)
    {
        var s = _settings;
        if (s.Count == 0) return [];
        switch (s.Selection)
        {
            case DemonstrationSelection.Fixed:
                return s.Pool.Take(s.Count);
            case DemonstrationSelection.Random:
                // FNV-1a of the question: string.GetHashCode differs between processes, this does not.
                uint hash = 2166136261;
                foreach (char c in question) hash = (hash ^ c) * 16777619;
                var random = new Random(unchecked(s.Seed * 31 + (int)hash));
                return s.Pool.Select(d => (d, key: random.Next())).OrderBy(x => x.key).Take(s.Count).Select(x => x.d).ToList();
            default:
                var q = _embedder!.Embed([question])[0];
                return _poolVectors!.Select((v, i) => (i, score: v.Zip(q, (a, b) => a * b).Sum()))
                    .OrderByDescending(x => x.score).ThenBy(x => x.i).Take(s.Count).Reverse().Select(x => s.Pool[x.i]).ToList();
        }
    }

    private static VersionInfo GetVersionInfo() => ModelVersions.Of<PromptBuilderTransformer>(ModelSignature, LoaderSignature, 0x00010001);

    protected override void SaveModel(ModelSaveContext ctx)
    {
        ctx.CheckAtModel();
        ctx.SetVersionInfo(GetVersionInfo());
        CheckedSettings.Write(ctx, _settings);
        ctx.Writer.Write(_package is not null);
        _package?.Save(ctx);
    }

    private static PromptBuilderTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        Contracts.CheckValue(env, nameof(env));
        ctx.CheckAtModel(GetVersionInfo());
        var s = CheckedSettings.Read<Settings>(ctx, "prompt builder");
        if (string.IsNullOrEmpty(s.Output) || string.IsNullOrEmpty(s.Question) || s.Template is null || s.DemonstrationTemplate is null || s.PassageTemplate is null ||
            s.Pool is null || s.Count < 0 || s.Count > s.Pool.Count || !Enum.IsDefined(s.Selection) || s.Embedder is { IsValid: false })
            throw new InvalidDataException("The model zip's prompt builder settings are out of range; it is corrupt.");
        if (!ctx.Reader.ReadBoolean()) return new PromptBuilderTransformer(env, s, null, null, false);
        if (s.Embedder is null) throw new InvalidDataException("The model zip's prompt builder has an encoder but no embedding settings; it is corrupt.");
        var package = ModelPackage.Load(ctx);
        try
        {
            return new PromptBuilderTransformer(env, s, EmbedderPackage.Load(package, s.Embedder), package, ownsEncoder: true);
        }
        catch
        {
            package.Dispose();
            throw;
        }
    }

    internal static void CheckInput(DataViewSchema schema, string question, string? passages, IExceptionContext ectx)
    {
        TextColumns.Require(schema, question, "question", ectx);
        if (passages is null) return;
        var c = schema.GetColumnOrNull(passages) ?? throw ectx.ExceptSchemaMismatch(nameof(schema), "passages", passages);
        if (c.Type is not VectorDataViewType { ItemType: TextDataViewType })
            throw ectx.ExceptSchemaMismatch(nameof(schema), "passages", passages, "Vector<String>", c.Type.ToString());
    }

    protected override IRowMapper MakeRowMapper(DataViewSchema schema) => new Mapper(this, schema);

    /// <summary>Disposes the encoder when this transformer loaded it, and its stored files.</summary>
    public void Dispose()
    {
        if (_ownsEncoder) _embedder?.Encoder.Dispose();
        _package?.Dispose();
    }

    private sealed class Mapper : MapperBase
    {
        private readonly PromptBuilderTransformer _owner;
        private readonly int _question;
        private readonly int _passages = -1;

        public Mapper(PromptBuilderTransformer owner, DataViewSchema schema) : base(owner.Host, schema, owner)
        {
            _owner = owner;
            CheckInput(schema, owner._settings.Question, owner._settings.Passages, Host);
            _question = schema[owner._settings.Question].Index;
            if (owner._settings.Passages is { } p) _passages = schema[p].Index;
        }

        protected override DataViewSchema.DetachedColumn[] GetOutputColumnsCore() => [new(_owner._settings.Output, TextDataViewType.Instance)];

        protected override Delegate MakeGetter(DataViewRow input, int iinfo, Func<int, bool> activeOutput, out Action disposer)
        {
            disposer = null!;
            var getQuestion = input.GetGetter<ReadOnlyMemory<char>>(input.Schema[_question]);
            var getPassages = _passages < 0 ? null : input.GetGetter<VBuffer<ReadOnlyMemory<char>>>(input.Schema[_passages]);
            ReadOnlyMemory<char> question = default;
            VBuffer<ReadOnlyMemory<char>> passages = default;
            return (ValueGetter<ReadOnlyMemory<char>>)((ref ReadOnlyMemory<char> value) =>
            {
                getQuestion(ref question);
                IReadOnlyList<string> texts = [];
                if (getPassages is not null)
                {
                    getPassages(ref passages);
                    texts = passages.DenseValues().Select(p => p.ToString()).ToList();
                }
                value = _owner.Build(question.ToString(), texts).AsMemory();
            });
        }

        protected override Func<int, bool> GetDependenciesCore(Func<int, bool> activeOutput) => col => activeOutput(0) && (col == _question || col == _passages);

        protected override void SaveModel(ModelSaveContext ctx) => _owner.SaveModel(ctx);
    }
}
