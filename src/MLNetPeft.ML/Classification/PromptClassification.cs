using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Generation;
using MLNetPeft.ML.Classification;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Tokenization;

[assembly: LoadableClass(typeof(PromptClassificationTransformer), null, typeof(SignatureLoadModel), "MLNetPeft Prompt Classification", PromptClassificationTransformer.LoaderSignature)]

namespace MLNetPeft.ML.Classification;

/// <summary>How the label words of one class combine into the class score.</summary>
public enum AnswerAggregation
{
    /// <summary>The best label word of the class (answer search: any of its words may be the answer).</summary>
    Max,
    /// <summary>The log of the summed probabilities of the class's words.</summary>
    LogSumExp,
}

/// <summary>Options of prompt-based classification (a causal LM, a template and a verbalizer; no training).</summary>
public sealed class PromptClassificationOptions
{
    public string LabelColumnName { get; set; } = "Label";
    public string Sentence1ColumnName { get; set; } = "Sentence1";
    public string? Sentence2ColumnName { get; set; }
    public string ScoreColumnName { get; set; } = "Score";
    public string PredictedLabelColumnName { get; set; } = "PredictedLabel";
    /// <summary>The prompt; <c>{sentence1}</c> and <c>{sentence2}</c> are replaced by the row's texts. The answer follows it.</summary>
    public string Template { get; set; } = "{sentence1}\nAnswer:";
    /// <summary>Answer mapping: for each label value (as the label column's key values spell it), its label words, each with its leading space.</summary>
    public IDictionary<string, string[]> Verbalizer { get; set; } = new Dictionary<string, string[]>();
    public AnswerAggregation Aggregation { get; set; } = AnswerAggregation.Max;
    /// <summary>Few-shot: this many solved training rows (template + first label word), drawn with <see cref="Seed"/>, precede each prompt.</summary>
    public int Shots { get; set; }
    public string DemonstrationSeparator { get; set; } = "\n\n";
    public long Seed { get; set; }

    internal void Validate()
    {
        if (string.IsNullOrWhiteSpace(Template) || !Template.Contains("{sentence1}", StringComparison.Ordinal))
            throw new ArgumentException("Template must contain {sentence1}.", nameof(Template));
        if (Verbalizer is null || Verbalizer.Count < 2) throw new ArgumentException("Verbalizer must map at least two labels to their words.", nameof(Verbalizer));
        foreach (var (label, words) in Verbalizer)
            if (words is null || words.Length == 0 || words.Any(string.IsNullOrEmpty))
                throw new ArgumentException($"Verbalizer entry '{label}' needs at least one non-empty label word.", nameof(Verbalizer));
        if (Shots < 0) throw new ArgumentOutOfRangeException(nameof(Shots), Shots, "must be zero or more");
    }
}

/// <summary>
/// Zero- or few-shot classification with a causal language model (prompt-based learning: template, answer search,
/// answer mapping). Fitting trains nothing: it maps the label column's key values to the verbalizer's classes and, for
/// few-shot, picks the demonstrations. Outputs the columns of ML.NET's multiclass trainers, so
/// <c>MulticlassClassification.Evaluate</c> and <c>MapKeyToValue</c> work.
/// </summary>
public sealed class PromptClassificationEstimator : IEstimator<PromptClassificationTransformer>
{
    private readonly IHostEnvironment _env;
    private readonly CausalLanguageModel _model;
    private readonly TextTokenizer _tokenizer;
    private readonly PromptClassificationOptions _options;

    internal PromptClassificationEstimator(IHostEnvironment env, CausalLanguageModel model, TextTokenizer tokenizer, PromptClassificationOptions options)
    {
        _env = env;
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        options.Validate();
    }

    public SchemaShape GetOutputSchema(SchemaShape inputSchema) =>
        ClassifierColumns.OutputShape(_env, inputSchema, _options.Sentence2ColumnName is { } s2 ? [_options.Sentence1ColumnName, s2] : [_options.Sentence1ColumnName],
            _options.LabelColumnName, binary: false, _options.ScoreColumnName, _options.PredictedLabelColumnName);

    public PromptClassificationTransformer Fit(IDataView input)
    {
        var o = _options;
        GetOutputSchema(SchemaShape.Create(input.Schema));
        ModelFiles.RequireCheckpointFolder(_model);
        var classes = ClassifierColumns.KeyValues(input.Schema[o.LabelColumnName])
            ?? throw new ArgumentException($"Label column '{o.LabelColumnName}' has no text key values to match the verbalizer; build it with MapValueToKey from a text column.", nameof(input));
        var missing = classes.Where(c => !o.Verbalizer.ContainsKey(c)).ToList();
        if (missing.Count > 0)
            throw new ArgumentException($"The verbalizer has no label words for {string.Join(", ", missing.Select(m => $"'{m}'"))}; it maps {string.Join(", ", o.Verbalizer.Keys.Select(k => $"'{k}'"))}.", nameof(input));
        var words = classes.Select(c => (IReadOnlyList<string>)o.Verbalizer[c]).ToList();

        // Few-shot: demonstrations drawn with the seed, cycling through the classes so each is shown.
        var demonstrations = new List<string>();
        var demonstrationInputs = new List<string>();
        if (o.Shots > 0)
        {
            var first = input.GetColumn<string>(o.Sentence1ColumnName).ToList();
            var second = o.Sentence2ColumnName is { } s2 ? input.GetColumn<string>(s2).ToList() : null;
            var labels = input.GetColumn<uint>(o.LabelColumnName).ToList();
            var random = new Random(unchecked((int)o.Seed));
            var byClass = Enumerable.Range(1, classes.Count).Select(k => Enumerable.Range(0, labels.Count).Where(i => labels[i] == k).OrderBy(_ => random.Next()).ToList()).ToList();
            for (int shot = 0; shot < o.Shots; shot++)
            {
                var pool = byClass[shot % classes.Count];
                if (pool.Count <= shot / classes.Count) continue;
                int row = pool[shot / classes.Count];
                var filled = PromptClassificationTransformer.Fill(o.Template, first[row], second?[row]);
                demonstrations.Add(filled + words[(int)labels[row] - 1][0]);
                demonstrationInputs.Add(filled);
            }
        }
        var package = ModelFiles.WithTempFolder(folder =>
        {
            _model.SavePretrained(folder);
            return ModelPackage.Embed(folder);
        });
        // The caller's model: it stays the caller's to dispose.
        return new PromptClassificationTransformer(_env, _model, _tokenizer, package, o, classes, words, demonstrations, demonstrationInputs, ownsModel: false);
    }
}

/// <summary>The fitted prompt-based classifier (see <see cref="PromptClassificationEstimator"/>).</summary>
public sealed class PromptClassificationTransformer : RowToRowTransformerBase, IDisposable
{
    internal const string LoaderSignature = "MLNetPeftPromptClsXf";
    private const string ModelSignature = "PEFTPCLS";

    private readonly CausalLanguageModel _model;
    private readonly TextTokenizer _tokenizer;
    private readonly ModelPackage _package;
    private readonly Settings _settings;
    private readonly bool _ownsModel;
    private readonly object _lock = new();

    /// <summary>What the transformer saves besides its model (JSON in the zip); <see cref="DemonstrationInputs"/> are the demonstrations' prompts without their answers.</summary>
    internal sealed record Settings(string Sentence1, string? Sentence2, string Score, string PredictedLabel, string Template,
        AnswerAggregation Aggregation, List<string> Classes, List<List<string>> Words, List<string> Demonstrations, string Separator,
        List<string>? DemonstrationInputs = null);

    internal PromptClassificationTransformer(IHostEnvironment env, CausalLanguageModel model, TextTokenizer tokenizer, ModelPackage package,
        PromptClassificationOptions o, IReadOnlyList<string> classes, IReadOnlyList<IReadOnlyList<string>> words, IReadOnlyList<string> demonstrations,
        IReadOnlyList<string> demonstrationInputs, bool ownsModel)
        : this(env, model, tokenizer, package, new Settings(o.Sentence1ColumnName, o.Sentence2ColumnName, o.ScoreColumnName, o.PredictedLabelColumnName,
            o.Template, o.Aggregation, [.. classes], words.Select(w => w.ToList()).ToList(), [.. demonstrations], o.DemonstrationSeparator, [.. demonstrationInputs]), ownsModel) { }

    private PromptClassificationTransformer(IHostEnvironment env, CausalLanguageModel model, TextTokenizer tokenizer, ModelPackage package, Settings settings, bool ownsModel)
        : base(Contracts.CheckRef(env, nameof(env)).Register(nameof(PromptClassificationTransformer)))
    {
        _ownsModel = ownsModel;
        _model = model;
        _tokenizer = tokenizer;
        _package = package;
        _settings = settings;
    }

    public IReadOnlyList<string> Classes => _settings.Classes;
    public IReadOnlyList<string> Demonstrations => _settings.Demonstrations;

    internal static string Fill(string template, string first, string? second) =>
        template.Replace("{sentence1}", first, StringComparison.Ordinal).Replace("{sentence2}", second ?? "", StringComparison.Ordinal);

    /// <summary>
    /// The prompt for one row: the demonstrations, then the row's template. A row that is itself one of the
    /// demonstrations (classifying the fitted data) is never shown its own answer: that demonstration is left out.
    /// </summary>
    internal string BuildPrompt(string first, string? second)
    {
        var s = _settings;
        var own = Fill(s.Template, first, second);
        var shown = s.Demonstrations.Where((_, i) => s.DemonstrationInputs is not { } inputs || i >= inputs.Count || inputs[i] != own);
        return string.Concat(shown.Select(d => d + s.Separator)) + own;
    }

    /// <summary>Class probabilities for one row: softmax over the classes' aggregated label-word log-likelihoods.</summary>
    internal float[] Probabilities(string first, string? second)
    {
        var s = _settings;
        var prompt = BuildPrompt(first, second);
        double[] scores;
        lock (_lock)
        {
            // Every label word of every class in one call (the prompt is encoded once), then grouped by class.
            var all = ContinuationScorer.LogLikelihoods(_model, _tokenizer, prompt, s.Words.SelectMany(w => w).ToList());
            int offset = 0;
            scores = s.Words.Select(words =>
            {
                var ll = all.AsSpan(offset, words.Count).ToArray();
                offset += words.Count;
                if (s.Aggregation == AnswerAggregation.Max) return ll.Max();
                double max = ll.Max();
                return max + Math.Log(ll.Sum(v => Math.Exp(v - max)));
            }).ToArray();
        }
        double top = scores.Max();
        var exp = scores.Select(v => Math.Exp(v - top)).ToArray();
        double total = exp.Sum();
        return exp.Select(v => (float)(v / total)).ToArray();
    }

    // 0x00010002: every stored file with its length and SHA-256.
    private static VersionInfo GetVersionInfo() => ModelVersions.Of<PromptClassificationTransformer>(ModelSignature, LoaderSignature, 0x00010002);

    protected override void SaveModel(ModelSaveContext ctx)
    {
        ctx.CheckAtModel();
        ctx.SetVersionInfo(GetVersionInfo());
        CheckedSettings.Write(ctx, _settings);
        _package.Save(ctx);
    }

    private static PromptClassificationTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        Contracts.CheckValue(env, nameof(env));
        ctx.CheckAtModel(GetVersionInfo());
        var settings = CheckedSettings.Read<Settings>(ctx, "prompt classification");
        if (settings.Classes is null || settings.Words is null || settings.Demonstrations is null || string.IsNullOrEmpty(settings.Template) ||
            settings.Classes.Count is < 2 or > ClassifierColumns.MaxClasses || settings.Words.Count != settings.Classes.Count || settings.Words.Any(w => w is not { Count: > 0 }))
            throw new InvalidDataException("The model zip's prompt classification settings are inconsistent; it is corrupt.");
        var package = ModelPackage.Load(ctx);
        try
        {
            var (model, tokenizer) = package.LoadModel();
            return new PromptClassificationTransformer(env, model, tokenizer, package, settings, ownsModel: true);
        }
        catch
        {
            package.Dispose();
            throw;
        }
    }

    protected override IRowMapper MakeRowMapper(DataViewSchema schema) => new Mapper(this, schema);

    /// <summary>Disposes the model if this transformer loaded it (a model the caller passed in stays the caller's), and its stored files.</summary>
    public void Dispose()
    {
        if (_ownsModel) _model.Dispose();
        _package.Dispose();
    }

    private sealed class Mapper : MapperBase
    {
        private readonly PromptClassificationTransformer _owner;
        private readonly int _first, _second = -1;

        public Mapper(PromptClassificationTransformer owner, DataViewSchema schema) : base(owner.Host, schema, owner)
        {
            _owner = owner;
            _first = ClassifierColumns.Text(Host, schema, owner._settings.Sentence1);
            if (owner._settings.Sentence2 is { } s2) _second = ClassifierColumns.Text(Host, schema, s2);
        }

        protected override DataViewSchema.DetachedColumn[] GetOutputColumnsCore() =>
            ClassifierColumns.Multiclass(_owner._settings.Score, _owner._settings.PredictedLabel, _owner._settings.Classes.Count, _owner._settings.Classes);

        protected override Delegate MakeGetter(DataViewRow input, int iinfo, Func<int, bool> activeOutput, out Action disposer)
        {
            disposer = null!;
            return ClassifierColumns.MulticlassGetter(iinfo, ClassifierColumns.RowProbabilities(input, _first, _second, _owner.Probabilities));
        }

        protected override Func<int, bool> GetDependenciesCore(Func<int, bool> activeOutput) =>
            col => (col == _first || col == _second) && (activeOutput(0) || activeOutput(1));

        protected override void SaveModel(ModelSaveContext ctx) => _owner.SaveModel(ctx);
    }
}

/// <summary>Catalog entry point: <c>mlContext.MulticlassClassification.Trainers.PromptClassification(model, tokenizer, options)</c>.</summary>
public static class PromptClassificationCatalog
{
    public static PromptClassificationEstimator PromptClassification(this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        CausalLanguageModel model, TextTokenizer tokenizer, PromptClassificationOptions options) =>
        new(CatalogUtils.GetEnvironment(catalog), model, tokenizer, options);
}
