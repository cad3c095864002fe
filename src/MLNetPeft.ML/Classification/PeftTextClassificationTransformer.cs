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
    private readonly IReadOnlyDictionary<string, byte[]> _baseFiles, _headFiles;
    private readonly IReadOnlyDictionary<string, byte[]>? _adapterFiles;
    private readonly object _lock = new();

    internal PeftTextClassificationTransformer(IHostEnvironment env, BertForSequenceClassification model, TextTokenizer tokenizer,
        IReadOnlyDictionary<string, byte[]> baseFiles, IReadOnlyDictionary<string, byte[]> headFiles, IReadOnlyDictionary<string, byte[]>? adapterFiles,
        bool binary, string sentence1, string? sentence2, string score, string predictedLabel, string probability, int maxLength, IReadOnlyList<string>? keyValues)
        : base(Contracts.CheckRef(env, nameof(env)).Register(nameof(PeftTextClassificationTransformer)))
    {
        _model = model;
        _tokenizer = tokenizer;
        _baseFiles = baseFiles;
        _headFiles = headFiles;
        _adapterFiles = adapterFiles;
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
    public bool HasUnmergedAdapter => _adapterFiles is not null;
    /// <summary>Parameters that trained during <c>Fit</c> (adapter and head, or all); null for a loaded model.</summary>
    public long? TrainedParameters { get; internal set; }

    private static VersionInfo GetVersionInfo() =>
        new(ModelSignature, verWrittenCur: 0x00010001, verReadableCur: 0x00010001, verWeCanReadBack: 0x00010001,
            loaderAssemblyName: typeof(PeftTextClassificationTransformer).Assembly.FullName, loaderSignature: LoaderSignature);

    protected override void SaveModel(ModelSaveContext ctx)
    {
        ctx.CheckAtModel();
        ctx.SetVersionInfo(GetVersionInfo());
        ctx.Writer.Write(IsBinary);
        ctx.Writer.Write(Sentence1ColumnName);
        ctx.Writer.Write(Sentence2ColumnName is not null);
        if (Sentence2ColumnName is not null) ctx.Writer.Write(Sentence2ColumnName);
        ctx.Writer.Write(ScoreColumnName);
        ctx.Writer.Write(PredictedLabelColumnName);
        ctx.Writer.Write(ProbabilityColumnName);
        ctx.Writer.Write(MaxSequenceLength);
        ctx.Writer.Write(_model.NumLabels);
        ctx.Writer.Write((int)_model.Pooling);
        ctx.Writer.Write(KeyValues?.Count ?? -1);
        foreach (var value in KeyValues ?? []) ctx.Writer.Write(value);
        ModelFiles.Save(ctx, _baseFiles, "File.");
        ModelFiles.Save(ctx, _headFiles, "Head.");
        ctx.Writer.Write(_adapterFiles is not null);
        if (_adapterFiles is not null) ModelFiles.Save(ctx, _adapterFiles, "Adapter.");
    }

    private static PeftTextClassificationTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        Contracts.CheckValue(env, nameof(env));
        ctx.CheckAtModel(GetVersionInfo());
        bool binary = ctx.Reader.ReadBoolean();
        var sentence1 = ctx.Reader.ReadString();
        var sentence2 = ctx.Reader.ReadBoolean() ? ctx.Reader.ReadString() : null;
        var score = ctx.Reader.ReadString();
        var predicted = ctx.Reader.ReadString();
        var probability = ctx.Reader.ReadString();
        int maxLength = ctx.Reader.ReadInt32();
        int classes = ctx.Reader.ReadInt32();
        var pooling = (SequencePooling)ctx.Reader.ReadInt32();
        int keyCount = ctx.Reader.ReadInt32();
        if (classes < 2 || maxLength < 3 || keyCount > classes || !Enum.IsDefined(pooling))
            throw new InvalidDataException("The model zip's text classification settings are out of range; it is corrupt.");
        var keyValues = keyCount < 0 ? null : Enumerable.Range(0, keyCount).Select(_ => ctx.Reader.ReadString()).ToList();
        var baseFiles = ModelFiles.Load(ctx, "File.");
        var headFiles = ModelFiles.Load(ctx, "Head.");
        var adapterFiles = ctx.Reader.ReadBoolean() ? ModelFiles.Load(ctx, "Adapter.") : null;
        var (model, tokenizer) = Assemble(baseFiles, headFiles, adapterFiles, classes, pooling);
        return new PeftTextClassificationTransformer(env, model, tokenizer, baseFiles, headFiles, adapterFiles, binary, sentence1, sentence2,
            score, predicted, probability, maxLength, keyValues);
    }

    /// <summary>Builds the classifier from its stored parts: encoder checkpoint, head weights, optional PEFT adapter.</summary>
    internal static (BertForSequenceClassification, TextTokenizer) Assemble(IReadOnlyDictionary<string, byte[]> baseFiles, IReadOnlyDictionary<string, byte[]> headFiles,
        IReadOnlyDictionary<string, byte[]>? adapterFiles, int classes, SequencePooling pooling)
    {
        // A QLoRA classifier keeps its encoder NF4-quantised (its adapter was trained over exactly those weights).
        var (bert, tokenizer) = ModelFiles.WithFolder(baseFiles, folder =>
            (Nf4Checkpoint.IsQuantized(folder) ? Nf4Checkpoint.LoadBert(folder).Model : PretrainedModels.LoadBert(folder), TextTokenizer.FromPretrained(folder)));
        var model = new BertForSequenceClassification(bert, classes, pooling);
        try
        {
            ModelFiles.WithFolder(headFiles, folder =>
            {
                using var file = SafetensorsFile.Open(Path.Combine(folder, HeadFileName));
                using var _ = no_grad();
                foreach (var (name, p) in model.named_parameters().Where(p => p.name.StartsWith("classifier.", StringComparison.Ordinal)))
                {
                    if (!file.Contains(name) || !file.Info(name).Shape.SequenceEqual(p.shape))
                        throw new InvalidDataException($"The model zip's classification head lacks '{name}' of shape [{string.Join(", ", p.shape)}]; it is corrupt.");
                    file.ReadInto(name, p);
                }
                return 0;
            });
            if (adapterFiles is not null)
                ModelFiles.WithFolder(adapterFiles, folder => PeftAdapterFiles.Load(model, folder, out _));
            model.eval();
            return (model, tokenizer);
        }
        catch
        {
            model.Dispose();
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

    public void Dispose() => _model.Dispose();

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
