using MLNetPeft.Generation;
using MLNetPeft.Training;
using MLNetPeft.Tuners.Lora;

namespace MLNetPeft.ML.FineTuning;

/// <summary>How the parameters are adapted.</summary>
public enum FineTuningMethod
{
    /// <summary>LoRA adapters on the target layers (the default); merged into the weights at the end.</summary>
    Lora,
    /// <summary>Every parameter trains.</summary>
    Full,
}

/// <summary>What to do with rows that cannot be used as they are.</summary>
public enum BadRowHandling
{
    /// <summary>Skip (empty text) or cut (too long) the row and log how many.</summary>
    SkipOrTruncate,
    /// <summary>Fail the fit, naming the row.</summary>
    Fail,
}

/// <summary>Options of <see cref="CausalLmFineTuningEstimator"/>.</summary>
public sealed class CausalLmFineTuningOptions
{
    /// <summary>Text column with the prompt (instruction); the default is "Prompt".</summary>
    public string PromptColumnName { get; set; } = "Prompt";
    /// <summary>Text column with the response to learn; the default is "Response".</summary>
    public string ResponseColumnName { get; set; } = "Response";
    /// <summary>Column the fitted transformer adds with generated text; the default is "GeneratedText".</summary>
    public string OutputColumnName { get; set; } = "GeneratedText";

    public FineTuningMethod Method { get; set; } = FineTuningMethod.Lora;
    /// <summary>LoRA settings (PEFT's defaults: r 8, alpha 8, the family's query/value projections).</summary>
    public LoraConfig Lora { get; set; } = new();
    /// <summary>Learn only the response tokens (TRL's completion-only loss; the default) or the whole text.</summary>
    public bool CompletionOnlyLoss { get; set; } = true;
    /// <summary>Longest prompt + response in tokens; longer rows are handled by <see cref="LongRows"/>.</summary>
    public int MaxLength { get; set; } = 128;
    public BadRowHandling EmptyRows { get; set; } = BadRowHandling.SkipOrTruncate;
    public BadRowHandling LongRows { get; set; } = BadRowHandling.SkipOrTruncate;

    /// <summary>Optimizer steps, batch size, learning rate and the rest of the training loop (see <see cref="TrainingOptions"/>).</summary>
    public TrainingOptions Training { get; set; } = new() { MaxSteps = 200, BatchSize = 8, LearningRate = 1e-3, WarmupSteps = 10, WeightDecay = 0 };
    /// <summary>Whether the fitted transformer also scores each row's response (columns LogLikelihood and Perplexity).</summary>
    public bool ScoreResponses { get; set; }
    /// <summary>Generation settings of the fitted transformer.</summary>
    public GenerationOptions Generation { get; set; } = new();
    /// <summary>Seed of the adapter initialisation (the training seed is <see cref="TrainingOptions.Seed"/>).</summary>
    public long Seed { get; set; }

    /// <summary>Progress after every optimizer step.</summary>
    public IProgress<TrainingProgress>? Progress { get; set; }
    /// <summary>Stops fitting at the next step boundary (with an <see cref="OperationCanceledException"/>).</summary>
    public CancellationToken CancellationToken { get; set; }

    internal void Validate()
    {
        foreach (var (name, value) in new[] { (nameof(PromptColumnName), PromptColumnName), (nameof(ResponseColumnName), ResponseColumnName), (nameof(OutputColumnName), OutputColumnName) })
            if (string.IsNullOrWhiteSpace(value)) throw new ArgumentException($"{name} must name a column.", name);
        if (MaxLength <= 1) throw new ArgumentOutOfRangeException(nameof(MaxLength), MaxLength, "must be at least 2 tokens");
        ArgumentNullException.ThrowIfNull(Training, nameof(Training));
        ArgumentNullException.ThrowIfNull(Generation, nameof(Generation));
        Training.Validate();
        Generation.Validate();
        if (Method == FineTuningMethod.Lora) Lora.Validate();
    }
}
