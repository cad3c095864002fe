using Microsoft.ML;
using MLNetPeft.Generation;
using MLNetPeft.Training;

namespace MLNetPeft.ML.FineTuning;

/// <summary>How the parameters are adapted.</summary>
public enum FineTuningMethod
{
    /// <summary>LoRA adapters on the target layers (the default); merged into the weights at the end unless <see cref="CausalLmTuningOptions.MergeAdapter"/> is false.</summary>
    Lora,
    /// <summary>Every parameter trains.</summary>
    Full,
    /// <summary>AdaLoRA: LoRA in SVD form whose rank budget shrinks by importance (<see cref="PeftMethodOptions.AdaLora"/>).</summary>
    AdaLora,
    /// <summary>IA3 rescaling vectors on keys, values and the feed-forward activation (<see cref="PeftMethodOptions.Ia3"/>).</summary>
    Ia3,
    /// <summary>BitFit: only the bias terms train (needs a model with biases, e.g. GPT-2).</summary>
    BitFit,
    /// <summary>LayerNorm tuning: only the normalisation layers' scales (and biases) train.</summary>
    LayerNorm,
    /// <summary>
    /// QLoRA: the linear layers are NF4-quantised (<see cref="PeftMethodOptions.Quantization"/>) and frozen,
    /// LoRA (<see cref="PeftMethodOptions.Lora"/>) trains on top; unmerged, the zip stores the quantised base.
    /// </summary>
    QLora,
    /// <summary>Prompt tuning: trainable virtual token embeddings before the input (<see cref="PeftMethodOptions.PromptTuning"/>); never merged.</summary>
    PromptTuning,
    /// <summary>P-Tuning: virtual token embeddings from a trainable MLP or LSTM encoder (<see cref="PeftMethodOptions.PTuning"/>); never merged.</summary>
    PTuning,
    /// <summary>Prefix tuning: trainable keys and values before every layer (<see cref="PeftMethodOptions.PrefixTuning"/>, with PrefixProjection); never merged.</summary>
    PrefixTuning,
    /// <summary>P-Tuning v2: prefix tuning without the reparameterisation MLP (<see cref="PeftMethodOptions.PrefixTuning"/>'s other settings); never merged.</summary>
    PTuningV2,
    /// <summary>Adapter tuning (Houlsby): bottlenecks after the attention and feed-forward blocks (<see cref="PeftMethodOptions.AdapterTuning"/>); never merged.</summary>
    AdapterTuning,
}

/// <summary>What to do with rows that cannot be used as they are.</summary>
public enum BadRowHandling
{
    /// <summary>Skip (empty text) or cut (too long) the row and log how many.</summary>
    SkipOrTruncate,
    /// <summary>Fail the fit, naming the row.</summary>
    Fail,
}

/// <summary>
/// What every estimator that tunes a copy of a causal language model shares (supervised fine-tuning, DPO): the method
/// and its settings, the training loop, how the result is stored and where it runs, and the generation settings of
/// the <see cref="Generation.TextGenerationTransformer"/> it returns.
/// </summary>
public abstract class CausalLmTuningOptions : PeftMethodOptions, ITrainingRunOptions
{
    /// <summary>Text column with the prompt (instruction); the default is "Prompt".</summary>
    public string PromptColumnName { get; set; } = "Prompt";
    /// <summary>Column the fitted transformer adds with generated text; the default is "GeneratedText".</summary>
    public string OutputColumnName { get; set; } = "GeneratedText";

    /// <summary>Longest prompt + response in tokens; longer rows are handled by <see cref="LongRows"/>.</summary>
    public int MaxLength { get; set; } = 128;
    /// <summary>
    /// Rows (same columns as the training data) whose loss is computed after the last step and every
    /// <see cref="TrainingOptions.EvalInterval"/> steps; reported in the progress and the log.
    /// </summary>
    public IDataView? ValidationData { get; set; }
    /// <summary>
    /// For the PEFT methods: merge the adapter into the weights at the end (the default; no extra latency), or keep it
    /// apart, in which case the saved model holds the base weights and the adapter in PEFT's adapter format.
    /// Prompt-learning methods and bottleneck adapters cannot be merged and are always kept apart.
    /// </summary>
    public bool MergeAdapter { get; set; } = true;
    /// <summary>Whether the saved model zip embeds the base model or refers to its folder (see <see cref="ML.BaseModelStorage"/>).</summary>
    public BaseModelStorage BaseModelStorage { get; set; } = BaseModelStorage.Auto;
    public BadRowHandling EmptyRows { get; set; } = BadRowHandling.SkipOrTruncate;
    public BadRowHandling LongRows { get; set; } = BadRowHandling.SkipOrTruncate;

    /// <summary>Optimizer steps, batch size, learning rate and the rest of the training loop (see <see cref="TrainingOptions"/>).</summary>
    public TrainingOptions Training { get; set; } = new() { MaxSteps = 200, BatchSize = 8, LearningRate = 1e-3, WarmupSteps = 10, WeightDecay = 0 };
    /// <summary>Generation settings of the fitted transformer.</summary>
    public GenerationOptions Generation { get; set; } = new();
    /// <summary>Seed of the adapter initialisation (the training seed is <see cref="TrainingOptions.Seed"/>).</summary>
    public long Seed { get; set; }
    /// <summary>Where to train and run the tuned model ("cpu", "cuda", "cuda:N"); null: the device of the model given.</summary>
    public string? Device { get; set; }
    /// <summary>The weights' dtype while training and after (Float32, BFloat16, Float16); null: the dtype of the model given.</summary>
    public TorchSharp.torch.ScalarType? DType { get; set; }

    /// <summary>Progress after every optimizer step.</summary>
    public IProgress<TrainingProgress>? Progress { get; set; }
    /// <summary>Stops fitting at the next step boundary (with an <see cref="OperationCanceledException"/>).</summary>
    public CancellationToken CancellationToken { get; set; }

    /// <summary>Whether the method adds virtual tokens or nonlinear layers (and so cannot be merged into the weights).</summary>
    internal bool CannotMerge => PeftMethods.CannotMerge(Method);

    /// <summary>The options' column names, each of which must name a column.</summary>
    internal abstract IEnumerable<(string Option, string? Value)> ColumnOptions { get; }

    internal virtual void Validate()
    {
        foreach (var (name, value) in ColumnOptions)
            if (string.IsNullOrWhiteSpace(value)) throw new ArgumentException($"{name} must name a column.", name);
        if (BaseModelStorage == BaseModelStorage.Reference && (Method == FineTuningMethod.Full || (MergeAdapter && !CannotMerge)))
            throw new ArgumentException("BaseModelStorage.Reference keeps the base model outside the zip, so its weights must stay as loaded: " +
                "use a PEFT method with MergeAdapter = false, or BaseModelStorage.Embed.", nameof(BaseModelStorage));
        if (BaseModelStorage == BaseModelStorage.Reference && Method == FineTuningMethod.QLora)
            throw new ArgumentException("QLoRA stores its quantised base inside the zip; BaseModelStorage.Reference is not available for it.", nameof(BaseModelStorage));
        if (MaxLength <= 1) throw new ArgumentOutOfRangeException(nameof(MaxLength), MaxLength, "must be at least 2 tokens");
        ArgumentNullException.ThrowIfNull(Training, nameof(Training));
        ArgumentNullException.ThrowIfNull(Generation, nameof(Generation));
        Training.Validate();
        Generation.Validate();
        ValidateMethod(Training.MaxSteps);
    }
}

/// <summary>Options of <see cref="CausalLmFineTuningEstimator"/>.</summary>
public sealed class CausalLmFineTuningOptions : CausalLmTuningOptions
{
    /// <summary>Text column with the response to learn; the default is "Response".</summary>
    public string ResponseColumnName { get; set; } = "Response";
    /// <summary>
    /// One text column to learn whole instead of prompt/response pairs (continued pretraining); when set, the prompt
    /// and response columns are not read and the fitted transformer continues this column's text.
    /// </summary>
    public string? TextColumnName { get; set; }
    /// <summary>Learn only the response tokens (TRL's completion-only loss; the default) or the whole text.</summary>
    public bool CompletionOnlyLoss { get; set; } = true;
    /// <summary>
    /// Concatenate rows into blocks of <see cref="CausalLmTuningOptions.MaxLength"/> tokens (TRL's packing: no padding,
    /// long rows continue in the next block instead of being cut) instead of one right-padded block per row.
    /// </summary>
    public bool Packing { get; set; }
    /// <summary>Whether the fitted transformer also scores each row's response (columns LogLikelihood and Perplexity).</summary>
    public bool ScoreResponses { get; set; }

    internal override IEnumerable<(string Option, string? Value)> ColumnOptions => TextColumnName is null
        ? [(nameof(PromptColumnName), PromptColumnName), (nameof(ResponseColumnName), ResponseColumnName), (nameof(OutputColumnName), OutputColumnName)]
        : [(nameof(TextColumnName), TextColumnName), (nameof(OutputColumnName), OutputColumnName)];

    internal override void Validate()
    {
        if (TextColumnName is not null && ScoreResponses)
            throw new ArgumentException("ScoreResponses scores a response column, which continued pretraining on TextColumnName does not have.", nameof(ScoreResponses));
        base.Validate();
    }
}
