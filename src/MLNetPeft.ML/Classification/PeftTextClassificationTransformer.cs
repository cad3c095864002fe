using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Checkpoints;
using MLNetPeft.ML.Classification;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Tokenization;
using MLNetPeft.Training.Classification;
using MLNetPeft.Tuners;
using MLNetPeft.Tuners.QLora;
using static TorchSharp.torch;

[assembly: LoadableClass(typeof(PeftTextClassificationTransformer), null, typeof(SignatureLoadModel), "MLNetPeft Text Classification", PeftTextClassificationTransformer.LoaderSignature)]

namespace MLNetPeft.ML.Classification;

/// <summary>
/// A fine-tuned BERT text classifier. Multiclass: adds the class probabilities (<c>Score</c>, a vector) and the
/// predicted class (<c>PredictedLabel</c>, a key with the training label's key values, so MapKeyToValue works).
/// Binary: adds <c>Score</c> (log-odds of true), <c>Probability</c> and <c>PredictedLabel</c> (Boolean). Saved with
/// <c>mlContext.Model.Save</c> together with its encoder, head and (unmerged) adapter.
/// </summary>
public sealed class PeftTextClassificationTransformer : RowToRowTransformerBase, IDisposable
{
    internal const string LoaderSignature = "MLNetPeftTextClassXf";
    private const string ModelSignature = "PEFTTCLS";

    private readonly BertForSequenceClassification _model;
    private readonly TextTokenizer _tokenizer;
    private readonly ClassifierParts _parts;
    private readonly object _lock = new();

    internal PeftTextClassificationTransformer(IHostEnvironment env, BertForSequenceClassification model, TextTokenizer tokenizer, ClassifierParts parts,
        bool binary, string sentence1, string? sentence2, string score, string predictedLabel, string probability, int maxLength, IReadOnlyList<string>? keyValues)
        : base(Contracts.CheckRef(env, nameof(env)).Register(nameof(PeftTextClassificationTransformer)))
    {
        _model = model;
        _tokenizer = tokenizer;
        _parts = parts;
        IsBinary = binary;
        Sentence1ColumnName = sentence1;
        Sentence2ColumnName = sentence2;
        ScoreColumnName = score;
        PredictedLabelColumnName = predictedLabel;
        ProbabilityColumnName = probability;
        MaxSequenceLength = maxLength;
        KeyValues = keyValues;
    }

    public bool IsBinary { get; }
    public int NumberOfClasses => _model.NumLabels;
    public string Sentence1ColumnName { get; }
    public string? Sentence2ColumnName { get; }
    public string ScoreColumnName { get; }
    public string PredictedLabelColumnName { get; }
    public string ProbabilityColumnName { get; }
    public int MaxSequenceLength { get; }
    /// <summary>The training label's key values (as text), restored on the predicted label.</summary>
    public IReadOnlyList<string>? KeyValues { get; }
    public bool HasUnmergedAdapter => _parts.Adapter is not null;
    /// <summary>Whether the saved zip embeds the encoder or refers to it (the bundled MiniLM by package version, another by folder).</summary>
    public BaseModelStorage BaseModelStorage => _parts.BaseReference is null ? BaseModelStorage.Embed : BaseModelStorage.Reference;
    /// <summary>Parameters that trained during <c>Fit</c> (adapter and head, or all); null for a loaded model.</summary>
    public long? TrainedParameters { get; internal set; }

    // 0x00010002: the encoder embedded or referenced; every stored file with its length and SHA-256.
    private static VersionInfo GetVersionInfo() => ModelVersions.Of<PeftTextClassificationTransformer>(ModelSignature, LoaderSignature, 0x00010002);

    protected override void SaveModel(ModelSaveContext ctx)
    {
        ctx.CheckAtModel();
        ctx.SetVersionInfo(GetVersionInfo());
        CheckedSettings.Write(ctx, new Settings(IsBinary, Sentence1ColumnName, Sentence2ColumnName, ScoreColumnName, PredictedLabelColumnName,
            ProbabilityColumnName, MaxSequenceLength, _model.NumLabels, _model.Pooling, KeyValues?.ToList()));
        _parts.Save(ctx);
    }

    /// <summary>What the transformer saves besides its model parts (checked JSON in the zip).</summary>
    private sealed record Settings(bool Binary, string Sentence1, string? Sentence2, string Score, string PredictedLabel, string Probability,
        int MaxSequenceLength, int Classes, SequencePooling Pooling, List<string>? KeyValues);

    private static PeftTextClassificationTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        Contracts.CheckValue(env, nameof(env));
        ctx.CheckAtModel(GetVersionInfo());
        var s = CheckedSettings.Read<Settings>(ctx, "text classification");
        if (s.Classes is < 2 or > ClassifierColumns.MaxClasses || s.MaxSequenceLength is < 3 or > 1 << 20 || (s.KeyValues?.Count ?? 0) > s.Classes ||
            !Enum.IsDefined(s.Pooling) || string.IsNullOrEmpty(s.Sentence1) || string.IsNullOrEmpty(s.Score) || string.IsNullOrEmpty(s.PredictedLabel))
            throw new InvalidDataException("The model zip's text classification settings are out of range; it is corrupt.");
        var (binary, sentence1, sentence2, score, predicted, probability, maxLength, classes, pooling, keyValues) =
            (s.Binary, s.Sentence1, s.Sentence2, s.Score, s.PredictedLabel, s.Probability, s.MaxSequenceLength, s.Classes, s.Pooling, s.KeyValues);
        var parts = ClassifierParts.Load(ctx);
        try
        {
            var (model, tokenizer) = parts.Assemble(classes, pooling);
            return new PeftTextClassificationTransformer(env, model, tokenizer, parts, binary, sentence1, sentence2,
                score, predicted, probability, maxLength, keyValues);
        }
        catch
        {
            parts.Dispose();
            throw;
        }
    }

    internal const string HeadFileName = "head.safetensors";

    protected override IRowMapper MakeRowMapper(DataViewSchema schema) => new Mapper(this, schema);

    /// <summary>Token ids and types of one row: [CLS] a [SEP] (b [SEP]), cut to <see cref="MaxSequenceLength"/>.</summary>
    internal static ClassificationExample Encode(TextTokenizer tokenizer, string first, string? second, int maxLength, int label)
    {
        var ids = tokenizer.Encode(first).ToList();
        var types = Enumerable.Repeat(0, ids.Count).ToList();
        if (second is not null)
        {
            var more = tokenizer.Encode(second, addSpecialTokens: false).ToList();
            if (tokenizer.TokenToId("[SEP]") is { } sep) more.Add(sep);
            ids.AddRange(more);
            types.AddRange(Enumerable.Repeat(1, more.Count));
        }
        if (ids.Count > maxLength)
        {
            // Cut the end but keep the final [SEP], as HF's truncation does.
            int last = ids[^1];
            ids = ids.Take(maxLength - 1).Append(last).ToList();
            types = types.Take(maxLength).ToList();
        }
        return new ClassificationExample(ids, types, label);
    }

    private float[] Probabilities(string first, string? second)
    {
        lock (_lock)
            return SequenceClassifierTrainer.Predict(_model, [Encode(_tokenizer, first, second, MaxSequenceLength, 0)], 1)[0];
    }

    /// <summary>Disposes the classifier (which this transformer built) and its stored files.</summary>
    public void Dispose()
    {
        _model.Dispose();
        _parts.Dispose();
    }

    private sealed class Mapper : MapperBase
    {
        private readonly PeftTextClassificationTransformer _owner;
        private readonly int _first, _second = -1;

        public Mapper(PeftTextClassificationTransformer owner, DataViewSchema schema) : base(owner.Host, schema, owner)
        {
            _owner = owner;
            _first = ClassifierColumns.Text(Host, schema, owner.Sentence1ColumnName);
            if (owner.Sentence2ColumnName is { } second) _second = ClassifierColumns.Text(Host, schema, second);
        }

        protected override DataViewSchema.DetachedColumn[] GetOutputColumnsCore()
        {
            var o = _owner;
            if (o.IsBinary)
                return [new(o.ScoreColumnName, NumberDataViewType.Single), new(o.ProbabilityColumnName, NumberDataViewType.Single),
                        new(o.PredictedLabelColumnName, BooleanDataViewType.Instance)];
            return ClassifierColumns.Multiclass(o.ScoreColumnName, o.PredictedLabelColumnName, o.NumberOfClasses, o.KeyValues);
        }

        protected override Delegate MakeGetter(DataViewRow input, int iinfo, Func<int, bool> activeOutput, out Action disposer)
        {
            disposer = null!;
            var row = ClassifierColumns.RowProbabilities(input, _first, _second, _owner.Probabilities);
            if (_owner.IsBinary)
            {
                return iinfo switch
                {
                    0 => (ValueGetter<float>)((ref float v) => { var p = row(); v = (float)Math.Log(Math.Max(p[1], 1e-30) / Math.Max(p[0], 1e-30)); }),
                    1 => (ValueGetter<float>)((ref float v) => v = row()[1]),
                    _ => (ValueGetter<bool>)((ref bool v) => v = row()[1] > row()[0]),
                };
            }
            return ClassifierColumns.MulticlassGetter(iinfo, row);
        }

        protected override Func<int, bool> GetDependenciesCore(Func<int, bool> activeOutput) =>
            col => (col == _first || col == _second) && Enumerable.Range(0, _owner.IsBinary ? 3 : 2).Any(activeOutput);

        protected override void SaveModel(ModelSaveContext ctx) => _owner.SaveModel(ctx);
    }
}
