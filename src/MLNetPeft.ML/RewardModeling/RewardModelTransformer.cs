using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.ML.Persistence;
using MLNetPeft.ML.RewardModeling;
using MLNetPeft.Tokenization;
using MLNetPeft.Training;
using MLNetPeft.Training.RewardModeling;
using static TorchSharp.torch;

[assembly: LoadableClass(typeof(RewardModelTransformer), null, typeof(SignatureLoadModel), "MLNetPeft Reward Model", RewardModelTransformer.LoaderSignature)]

namespace MLNetPeft.ML.RewardModeling;

/// <summary>
/// A trained reward model. Scores prompt + response into a float <c>Score</c> column and, where the view has chosen and
/// rejected columns, both of them (<c>ChosenScore</c>, <c>RejectedScore</c>); works with <c>PredictionEngine</c> and is
/// an <see cref="IRewardFunction"/> (the reward that RLHF optimises). Saved with <c>mlContext.Model.Save</c>, the model
/// inside as an HF sequence-classification checkpoint (plus a PEFT adapter for methods that cannot be merged).
/// </summary>
public sealed class RewardModelTransformer : RowToRowTransformerBase, IRewardFunction, IDisposable
{
    internal const string LoaderSignature = "MLNetPeftRewardModelXf";
    private const string ModelSignature = "PEFTRWRD";

    private readonly SequenceClassificationModel _model;
    private readonly TextTokenizer _tokenizer;
    private readonly ModelPackage _package;
    private readonly Settings _settings;
    private readonly object _lock = new();

    internal RewardModelTransformer(IHostEnvironment env, SequenceClassificationModel model, TextTokenizer tokenizer, ModelPackage package, Settings settings)
        : base(Contracts.CheckRef(env, nameof(env)).Register(nameof(RewardModelTransformer)))
    {
        _model = model;
        _tokenizer = tokenizer;
        _package = package;
        _settings = settings;
    }

    /// <summary>What the transformer saves besides its model (checked JSON in the zip).</summary>
    internal sealed record Settings(string Prompt, string Response, string Chosen, string Rejected, string Score, string ChosenScore, string RejectedScore,
        int MaxLength, int EndOfResponse, SequencePooling? Pooling);

    public string PromptColumnName => _settings.Prompt;
    public string ResponseColumnName => _settings.Response;
    public string ChosenColumnName => _settings.Chosen;
    public string RejectedColumnName => _settings.Rejected;
    public string ScoreColumnName => _settings.Score;
    public string ChosenScoreColumnName => _settings.ChosenScore;
    public string RejectedScoreColumnName => _settings.RejectedScore;
    public int MaxLength => _settings.MaxLength;
    /// <summary>The reward model (an HF …ForSequenceClassification with one label).</summary>
    public SequenceClassificationModel Model => _model;
    /// <summary>Parameters that trained during <c>Fit</c> (adapter and head, or all); null for a loaded model.</summary>
    public long? TrainedParameters { get; internal set; }

    /// <summary>The rewards of prompt + response pairs, scored in one batch (thread-safe).</summary>
    public float[] Score(IReadOnlyList<string> prompts, IReadOnlyList<string> responses)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        ArgumentNullException.ThrowIfNull(responses);
        if (prompts.Count != responses.Count) throw new ArgumentException($"{prompts.Count} prompts but {responses.Count} responses.", nameof(responses));
        if (prompts.Count == 0) return [];
        var sequences = prompts.Zip(responses, (p, r) => (IReadOnlyList<int>)PreferencePairs.FitToLength(_tokenizer.Encode(p ?? ""),
            [.. _tokenizer.Encode(r ?? "", addSpecialTokens: false), _settings.EndOfResponse], _settings.MaxLength).Ids).ToList();
        lock (_lock)
        {
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            _model.eval();
            return RewardModelTrainer.Rewards(_model, sequences).cpu().data<float>().ToArray();
        }
    }

    private float Score(string prompt, string response) => Score([prompt], [response])[0];

    /// <summary>The output columns for an input shape: Score given a response column, ChosenScore/RejectedScore given both of those.</summary>
    internal static SchemaShape OutputShape(SchemaShape input, string prompt, string response, string chosen, string rejected, string score, string chosenScore, string rejectedScore)
    {
        bool Text(string name) => input.TryFindColumn(name, out var c) && c.Kind == SchemaShape.Column.VectorKind.Scalar && c.ItemType is TextDataViewType;
        var columns = input.ToDictionary(c => c.Name);
        void Add(string name) => columns[name] = new SchemaShape.Column(name, SchemaShape.Column.VectorKind.Scalar, NumberDataViewType.Single, false);
        if (Text(response)) Add(score);
        if (Text(chosen) && Text(rejected)) { Add(chosenScore); Add(rejectedScore); }
        return new SchemaShape(columns.Values);
    }

    // 0x00010001: settings as checked JSON, the model as a stored HF checkpoint (and adapter).
    private static VersionInfo GetVersionInfo() => ModelVersions.Of<RewardModelTransformer>(ModelSignature, LoaderSignature, 0x00010001);

    protected override void SaveModel(ModelSaveContext ctx)
    {
        ctx.CheckAtModel();
        ctx.SetVersionInfo(GetVersionInfo());
        CheckedSettings.Write(ctx, _settings);
        _package.Save(ctx);
    }

    private static RewardModelTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        Contracts.CheckValue(env, nameof(env));
        ctx.CheckAtModel(GetVersionInfo());
        var s = CheckedSettings.Read<Settings>(ctx, "reward model");
        if (s.MaxLength is < 2 or > 1 << 20 || s.EndOfResponse < 0 || (s.Pooling is { } p && !Enum.IsDefined(p)) ||
            new[] { s.Prompt, s.Response, s.Chosen, s.Rejected, s.Score, s.ChosenScore, s.RejectedScore }.Any(string.IsNullOrEmpty))
            throw new InvalidDataException("The model zip's reward model settings are out of range; it is corrupt.");
        var package = ModelPackage.Load(ctx);
        try
        {
            var (model, tokenizer) = package.LoadSequenceClassifier(s.Pooling);
            if (model.NumLabels != 1) throw new InvalidDataException($"The model zip's reward model has {model.NumLabels} outputs; a reward model has one.");
            return new RewardModelTransformer(env, model, tokenizer, package, s);
        }
        catch
        {
            package.Dispose();
            throw;
        }
    }

    protected override IRowMapper MakeRowMapper(DataViewSchema schema) => new Mapper(this, schema);

    /// <summary>Disposes the reward model (which this transformer built or loaded) and its stored files.</summary>
    public void Dispose()
    {
        _model.Dispose();
        _package.Dispose();
    }

    private sealed class Mapper : MapperBase
    {
        private readonly RewardModelTransformer _owner;
        private readonly int _prompt;
        private readonly List<(string Output, int Input)> _outputs = [];

        public Mapper(RewardModelTransformer owner, DataViewSchema schema) : base(owner.Host, schema, owner)
        {
            _owner = owner;
            var s = owner._settings;
            _prompt = TextColumn(schema, s.Prompt) ?? throw Host.ExceptSchemaMismatch(nameof(schema), "prompt", s.Prompt);
            if (TextColumn(schema, s.Response) is { } response) _outputs.Add((s.Score, response));
            if (TextColumn(schema, s.Chosen) is { } chosen && TextColumn(schema, s.Rejected) is { } rejected)
            {
                _outputs.Add((s.ChosenScore, chosen));
                _outputs.Add((s.RejectedScore, rejected));
            }
            if (_outputs.Count == 0) throw Host.ExceptSchemaMismatch(nameof(schema), "response", $"{s.Response}' (or '{s.Chosen}' and '{s.Rejected}");
        }

        private int? TextColumn(DataViewSchema schema, string name)
        {
            if (schema.GetColumnOrNull(name) is not { } column) return null;
            if (column.Type is not TextDataViewType) throw Host.ExceptSchemaMismatch(nameof(schema), "text", name, "String", column.Type.ToString());
            return column.Index;
        }

        protected override DataViewSchema.DetachedColumn[] GetOutputColumnsCore() =>
            _outputs.Select(o => new DataViewSchema.DetachedColumn(o.Output, NumberDataViewType.Single)).ToArray();

        protected override Delegate MakeGetter(DataViewRow input, int iinfo, Func<int, bool> activeOutput, out Action disposer)
        {
            disposer = null!;
            var getPrompt = input.GetGetter<ReadOnlyMemory<char>>(input.Schema[_prompt]);
            var getResponse = input.GetGetter<ReadOnlyMemory<char>>(input.Schema[_outputs[iinfo].Input]);
            return (ValueGetter<float>)((ref float value) =>
            {
                ReadOnlyMemory<char> prompt = default, response = default;
                getPrompt(ref prompt);
                getResponse(ref response);
                value = _owner.Score(prompt.ToString(), response.ToString());
            });
        }

        protected override Func<int, bool> GetDependenciesCore(Func<int, bool> activeOutput) =>
            col => Enumerable.Range(0, _outputs.Count).Any(i => activeOutput(i) && (col == _prompt || col == _outputs[i].Input));

        protected override void SaveModel(ModelSaveContext ctx) => _owner.SaveModel(ctx);
    }
}
