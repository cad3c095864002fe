using Microsoft.ML;
using MLNetPeft.Architectures;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.Training;

namespace MLNetPeft.ML.RewardModeling;

/// <summary>Options of <see cref="RewardModelEstimator"/> (TRL's <c>RewardConfig</c> where it has the setting).</summary>
/// <remarks>The method adapts the backbone; the scalar head always trains in full (PEFT's modules_to_save). QLoRA quantises only the backbone.</remarks>
public sealed class RewardModelOptions : PeftMethodOptions, ITrainingRunOptions
{
    /// <summary>Text column with the prompt (the conversation so far); the default is "Prompt".</summary>
    public string PromptColumnName { get; set; } = "Prompt";
    /// <summary>Text column with the preferred response; the default is "Chosen".</summary>
    public string ChosenColumnName { get; set; } = "Chosen";
    /// <summary>Text column with the dispreferred response; the default is "Rejected".</summary>
    public string RejectedColumnName { get; set; } = "Rejected";
    /// <summary>A float column by which chosen should beat rejected (TRL's margin), or null for none.</summary>
    public string? MarginColumnName { get; set; }
    /// <summary>Text column the fitted transformer scores together with the prompt; the default is "Response".</summary>
    public string ResponseColumnName { get; set; } = "Response";
    /// <summary>Column of the reward of prompt + response; the default is "Score".</summary>
    public string ScoreColumnName { get; set; } = "Score";
    /// <summary>Columns of the rewards of prompt + chosen and prompt + rejected, added when the view has those columns.</summary>
    public string ChosenScoreColumnName { get; set; } = "ChosenScore";
    public string RejectedScoreColumnName { get; set; } = "RejectedScore";

    /// <summary>TRL's center_rewards_coefficient (e.g. 0.01): pulls the rewards' mean towards 0; null leaves it free (TRL's default).</summary>
    public double? CenterRewardsCoefficient { get; set; }
    /// <summary>Longest prompt + response in tokens; longer sides keep their response and lose the start of the prompt.</summary>
    public int MaxLength { get; set; } = 512;
    /// <summary>Pooling of a BERT backbone's last hidden state; null: its pooler when it has one, the mean otherwise (MiniLM).</summary>
    public SequencePooling? Pooling { get; set; }
    /// <summary>Pairs (same columns as the training data) whose pairwise loss is computed every <see cref="TrainingOptions.EvalInterval"/> steps and at the end.</summary>
    public IDataView? ValidationData { get; set; }
    /// <summary>Rows with an empty text, or whose chosen equals rejected: skipped and counted (the default), or fail the fit.</summary>
    public BadRowHandling EmptyRows { get; set; } = BadRowHandling.SkipOrTruncate;
    public BadRowHandling LongRows { get; set; } = BadRowHandling.SkipOrTruncate;
    /// <summary>Optimizer steps, batch size (pairs), learning rate and the rest of the training loop.</summary>
    public TrainingOptions Training { get; set; } = new() { MaxSteps = 200, BatchSize = 8, LearningRate = 1e-3, WarmupSteps = 10, WeightDecay = 0 };
    /// <summary>Seed of the head's and the adapter's initialisation (the training seed is <see cref="TrainingOptions.Seed"/>).</summary>
    public long Seed { get; set; }
    /// <summary>Where to train and run the reward model ("cpu", "cuda", "cuda:N"); null: the device of the model given.</summary>
    public string? Device { get; set; }
    /// <summary>The weights' dtype while training and after; null: the dtype of the model given.</summary>
    public TorchSharp.torch.ScalarType? DType { get; set; }
    public IProgress<TrainingProgress>? Progress { get; set; }
    public CancellationToken CancellationToken { get; set; }

    internal void Validate()
    {
        foreach (var (name, value) in new[] { (nameof(PromptColumnName), PromptColumnName), (nameof(ChosenColumnName), ChosenColumnName),
                     (nameof(RejectedColumnName), RejectedColumnName), (nameof(ResponseColumnName), ResponseColumnName), (nameof(ScoreColumnName), ScoreColumnName),
                     (nameof(ChosenScoreColumnName), ChosenScoreColumnName), (nameof(RejectedScoreColumnName), RejectedScoreColumnName) })
            if (string.IsNullOrWhiteSpace(value)) throw new ArgumentException($"{name} must name a column.", name);
        if (MarginColumnName is { } margin && string.IsNullOrWhiteSpace(margin)) throw new ArgumentException($"{nameof(MarginColumnName)} must name a column or be null.", nameof(MarginColumnName));
        if (MaxLength < 2) throw new ArgumentOutOfRangeException(nameof(MaxLength), MaxLength, "must be at least 2 tokens");
        if (CenterRewardsCoefficient is { } c && !(c >= 0 && double.IsFinite(c)))
            throw new ArgumentOutOfRangeException(nameof(CenterRewardsCoefficient), c, "must be a finite number ≥ 0");
        ArgumentNullException.ThrowIfNull(Training, nameof(Training));
        Training.Validate();
        ValidateMethod(Training.MaxSteps);
    }
}
