using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Generation;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Tokenization;

[assembly: LoadableClass(typeof(TextGenerationTransformer), null, typeof(SignatureLoadModel), "MLNetPeft Text Generation", TextGenerationTransformer.LoaderSignature)]

namespace MLNetPeft.ML.Generation;

/// <summary>
/// Adds a text column with what a causal language model generates for each row's prompt. Saved with
/// <c>mlContext.Model.Save</c> together with its model (config, safetensors weights, tokenizer files) and options.
/// </summary>
public sealed class TextGenerationTransformer : RowToRowTransformerBase, IDisposable
{
    internal const string LoaderSignature = "MLNetPeftTextGenXf";
    private const string ModelSignature = "PEFTTGEN";

    private readonly CausalLanguageModel _model;
    private readonly TextGenerator _generator;
    private readonly TextTokenizer _tokenizer;
    private readonly ModelPackage _package;
    private readonly bool _ownsModel;
    private readonly object _lock = new();

    /// <summary>The language model it runs (owned by this transformer when it was fitted or loaded).</summary>
    public CausalLanguageModel Model => _model;
    public string InputColumnName { get; }
    public string OutputColumnName { get; }
    public GenerationOptions Options { get; }
    /// <summary>The model's tokenizer, with its chat template (what a chat client builds prompts with).</summary>
    public TextTokenizer Tokenizer => _tokenizer;
    /// <summary>When set, each row's reference response (this column) is also scored: columns LogLikelihood and Perplexity.</summary>
    public string? ScoredResponseColumnName { get; }

    /// <summary>Whether the saved zip embeds the base model or refers to its folder (see <see cref="ML.BaseModelStorage"/>).</summary>
    public BaseModelStorage BaseModelStorage => _package.Storage;
    /// <summary>Whether the model carries an adapter that is kept apart from the base weights (saved in PEFT's adapter format).</summary>
    public bool HasUnmergedAdapter => _package.AdapterFiles is not null;

    public const string LogLikelihoodColumnName = "LogLikelihood";
    public const string PerplexityColumnName = "Perplexity";

    internal TextGenerationTransformer(IHostEnvironment env, CausalLanguageModel model, TextTokenizer tokenizer,
        ModelPackage package, string outputColumnName, string inputColumnName, GenerationOptions options,
        string? scoredResponseColumnName, bool ownsModel)
        : base(Contracts.CheckRef(env, nameof(env)).Register(nameof(TextGenerationTransformer)))
    {
        _ownsModel = ownsModel;
        ScoredResponseColumnName = scoredResponseColumnName;
        _model = model;
        _generator = new TextGenerator(model, tokenizer);
        _tokenizer = tokenizer;
        _package = package;
        OutputColumnName = outputColumnName;
        InputColumnName = inputColumnName;
        Options = options;
    }

    // 0x00010002: base model embedded or referenced, optional unmerged adapter. 0x00010003: every stored file with its length and SHA-256.
    private static VersionInfo GetVersionInfo() => ModelVersions.Of<TextGenerationTransformer>(ModelSignature, LoaderSignature, 0x00010003);

    private static TextGenerationTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        Contracts.CheckValue(env, nameof(env));
        ctx.CheckAtModel(GetVersionInfo());
        var settings = CheckedSettings.Read<Settings>(ctx, "text generation");
        if (string.IsNullOrEmpty(settings.Output) || string.IsNullOrEmpty(settings.Input) || settings.Options is null)
            throw new InvalidDataException("The model zip's text generation settings are incomplete; it is corrupt.");
        var options = settings.Options;
        try { options.Validate(); }
        catch (ArgumentException e) { throw new InvalidDataException($"The model zip's generation options are out of range: {e.Message}", e); }
        var (output, input, scored) = (settings.Output, settings.Input, settings.Scored);
        var package = ModelPackage.Load(ctx);
        try
        {
            var (model, tokenizer) = package.LoadModel();
            return new TextGenerationTransformer(env, model, tokenizer, package, output, input, options, scored, ownsModel: true);
        }
        catch
        {
            package.Dispose();
            throw;
        }
    }

    protected override void SaveModel(ModelSaveContext ctx)
    {
        ctx.CheckAtModel();
        ctx.SetVersionInfo(GetVersionInfo());
        CheckedSettings.Write(ctx, new Settings(OutputColumnName, InputColumnName, Options, ScoredResponseColumnName));
        _package.Save(ctx);
    }

    /// <summary>What the transformer saves besides its model (checked JSON in the zip).</summary>
    private sealed record Settings(string Output, string Input, GenerationOptions Options, string? Scored);

    protected override IRowMapper MakeRowMapper(DataViewSchema schema) => new Mapper(this, schema);

    /// <summary>
    /// Teacher-forced scoring of <paramref name="response"/> after <paramref name="prompt"/>: the summed negative
    /// log-likelihood of the response tokens (and eos), their count, and how many the model ranks first.
    /// </summary>
    internal (double NegativeLogLikelihood, int Tokens, int Correct) Score(string prompt, string response)
    {
        lock (_lock)
        {
            var promptIds = _tokenizer.Encode(prompt);
            var responseIds = _tokenizer.Encode(response, addSpecialTokens: false).Append(_tokenizer.EosId ?? 0).ToList();
            var ids = promptIds.Concat(responseIds).Select(i => (long)i).ToArray();
            using var scope = TorchSharp.torch.NewDisposeScope();
            using var _ = TorchSharp.torch.no_grad();
            var device = _model.parameters().First().device;
            var logits = _model.Forward(TorchSharp.torch.tensor(ids, device: device).unsqueeze(0))[0].to(TorchSharp.torch.ScalarType.Float32);
            // Position t predicts token t + 1: the response starts at index promptIds.Count.
            var predicting = logits.narrow(0, promptIds.Count - 1, responseIds.Count).log_softmax(-1);
            var targets = TorchSharp.torch.tensor(responseIds.Select(i => (long)i).ToArray(), device: device);
            double nll = -predicting.gather(1, targets.unsqueeze(1)).sum().item<float>();
            int correct = (int)predicting.argmax(1).eq(targets).sum().item<long>();
            return (nll, responseIds.Count, correct);
        }
    }

    /// <summary>Generates for one prompt with the transformer's options (as each row is generated).</summary>
    internal string Generate(string prompt) => Generate(prompt, Options).Text;

    /// <summary>
    /// Generates for one prompt with other options than the saved ones (a chat request's temperature, say), streaming
    /// each token to <paramref name="onToken"/>. Calls are served one at a time: the model is not thread-safe.
    /// </summary>
    public GenerationResult Generate(string prompt, GenerationOptions options, Action<GeneratedToken>? onToken = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(options);
        lock (_lock) return _generator.Generate(prompt, options, onToken, cancellationToken);
    }

    /// <summary>
    /// Generates for several prompts in one left-padded batch (shared forward passes); <see cref="GeneratedToken.Row"/>
    /// says which prompt a streamed token belongs to.
    /// </summary>
    public IReadOnlyList<GenerationResult> Generate(IReadOnlyList<string> prompts, GenerationOptions options, Action<GeneratedToken>? onToken = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        ArgumentNullException.ThrowIfNull(options);
        lock (_lock) return _generator.Generate(prompts, options, onToken, cancellationToken);
    }

    /// <summary>
    /// Writes the model as an HF checkpoint folder (config, weights, tokenizer files) that transformers and this library
    /// load; an unmerged adapter goes to its <c>adapter</c> subfolder in PEFT's adapter format, which PEFT applies to the
    /// base in the folder.
    /// </summary>
    public void ExportPretrained(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        _package.Export(folder);
    }

    /// <summary>
    /// Writes the model as a GGUF file that llama.cpp (LLamaSharp, Ollama) runs. An unmerged LoRA adapter is written
    /// beside it as a llama.cpp GGUF adapter (<paramref name="adapterPath"/>, by default <c>{name}.lora.gguf</c>), the
    /// base file holding the base weights; other unmerged adapters cannot be represented and are refused.
    /// </summary>
    /// <returns>The adapter file written, or null when the model has no unmerged adapter.</returns>
    public string? ExportGguf(string path, MLNetPeft.Gguf.GgufFileType fileType = MLNetPeft.Gguf.GgufFileType.F16, string? adapterPath = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var folder = Directory.CreateTempSubdirectory("mlnetpeft-gguf-export-").FullName;
        try
        {
            _package.Export(folder);
            MLNetPeft.Gguf.GgufModels.Export(folder, path, fileType);
            var adapterFolder = Path.Combine(folder, "adapter");
            if (!Directory.Exists(adapterFolder)) return null;
            using var model = PretrainedModels.LoadCausalLM(folder);
            using var peft = MLNetPeft.Tuners.PeftAdapterFiles.Load(model, adapterFolder, out _);
            if (peft is not MLNetPeft.Tuners.Lora.LoraModel lora)
                throw new NotSupportedException($"The model's unmerged adapter is {peft.Config.PeftType}; llama.cpp applies LoRA adapters only. Train with MergeAdapter set to export it merged.");
            adapterPath ??= Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, Path.GetFileNameWithoutExtension(path) + ".lora.gguf");
            MLNetPeft.Tuners.Lora.LoraGguf.Save(lora, adapterPath, fileType == MLNetPeft.Gguf.GgufFileType.Q8_0 ? MLNetPeft.Gguf.GgufFileType.F16 : fileType);
            return adapterPath;
        }
        finally
        {
            try { Directory.Delete(folder, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>
    /// The output shape of the estimators that produce this transformer: the text columns they read must be scalar
    /// text; the generated-text column is added, and with <paramref name="scored"/> the LogLikelihood and Perplexity columns.
    /// </summary>
    internal static SchemaShape OutputShape(IExceptionContext ectx, SchemaShape inputSchema, IEnumerable<string> textColumns, string outputColumnName, bool scored)
    {
        foreach (var name in textColumns)
        {
            if (!inputSchema.TryFindColumn(name, out var column)) throw ectx.ExceptSchemaMismatch(nameof(inputSchema), "text", name);
            if (column.Kind != SchemaShape.Column.VectorKind.Scalar || column.ItemType is not TextDataViewType)
                throw ectx.ExceptSchemaMismatch(nameof(inputSchema), "text", name, "String", column.GetTypeString());
        }
        var columns = inputSchema.ToDictionary(c => c.Name);
        columns[outputColumnName] = new SchemaShape.Column(outputColumnName, SchemaShape.Column.VectorKind.Scalar, TextDataViewType.Instance, false);
        if (scored)
            foreach (var name in new[] { LogLikelihoodColumnName, PerplexityColumnName })
                columns[name] = new SchemaShape.Column(name, SchemaShape.Column.VectorKind.Scalar, NumberDataViewType.Single, false);
        return new SchemaShape(columns.Values);
    }

    internal static void CheckInput(DataViewSchema schema, string column, IExceptionContext ectx) => TextColumns.Require(schema, column, "prompt", ectx);

    /// <summary>Disposes the model if this transformer created or loaded it (a model the caller passed in stays the caller's), and its stored files.</summary>
    public void Dispose()
    {
        if (_ownsModel) _model.Dispose();
        _package.Dispose();
    }

    private sealed class Mapper : MapperBase
    {
        private readonly TextGenerationTransformer _owner;
        private readonly int _input;
        private readonly int _response = -1;

        public Mapper(TextGenerationTransformer parent, DataViewSchema schema) : base(parent.Host, schema, parent)
        {
            _owner = parent;
            CheckInput(schema, parent.InputColumnName, parent.Host);
            _input = schema[parent.InputColumnName].Index;
            if (parent.ScoredResponseColumnName is { } response)
            {
                CheckInput(schema, response, parent.Host);
                _response = schema[response].Index;
            }
        }

        protected override DataViewSchema.DetachedColumn[] GetOutputColumnsCore() => _response < 0
            ? [new DataViewSchema.DetachedColumn(_owner.OutputColumnName, TextDataViewType.Instance)]
            : [new DataViewSchema.DetachedColumn(_owner.OutputColumnName, TextDataViewType.Instance),
               new DataViewSchema.DetachedColumn(LogLikelihoodColumnName, NumberDataViewType.Single),
               new DataViewSchema.DetachedColumn(PerplexityColumnName, NumberDataViewType.Single)];

        protected override Delegate MakeGetter(DataViewRow input, int iinfo, Func<int, bool> activeOutput, out Action disposer)
        {
            disposer = null!;
            var getPrompt = input.GetGetter<ReadOnlyMemory<char>>(input.Schema[_input]);
            ReadOnlyMemory<char> prompt = default;
            if (iinfo == 0)
            {
                return (ValueGetter<ReadOnlyMemory<char>>)((ref ReadOnlyMemory<char> value) =>
                {
                    getPrompt(ref prompt);
                    value = _owner.Generate(prompt.ToString()).AsMemory();
                });
            }
            var getResponse = input.GetGetter<ReadOnlyMemory<char>>(input.Schema[_response]);
            ReadOnlyMemory<char> response = default;
            return (ValueGetter<float>)((ref float value) =>
            {
                getPrompt(ref prompt);
                getResponse(ref response);
                var (nll, tokens, _) = _owner.Score(prompt.ToString(), response.ToString());
                value = iinfo == 1 ? (float)-nll : (float)Math.Exp(nll / tokens);
            });
        }

        protected override Func<int, bool> GetDependenciesCore(Func<int, bool> activeOutput) =>
            col => (activeOutput(0) && col == _input) || (_response >= 0 && (activeOutput(1) || activeOutput(2)) && (col == _input || col == _response));

        protected override void SaveModel(ModelSaveContext ctx) => _owner.SaveModel(ctx);
    }
}
