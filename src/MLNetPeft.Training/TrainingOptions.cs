namespace MLNetPeft.Training;

/// <summary>Options of <see cref="Trainer"/> (and the trainers built on it); defaults follow nanoGPT's small-model settings.</summary>
public sealed class TrainingOptions
{
    /// <summary>Optimizer updates to take.</summary>
    public int MaxSteps { get; set; } = 1000;
    /// <summary>Examples per micro-batch (token blocks for language modelling, texts for classification).</summary>
    public int BatchSize { get; set; } = 8;
    /// <summary>Micro-batches whose gradients are summed into one update (effective batch = BatchSize × this).</summary>
    public int GradientAccumulationSteps { get; set; } = 1;
    public double LearningRate { get; set; } = 1e-3;
    /// <summary>Rate at the end of the cosine decay; null means LearningRate / 10.</summary>
    public double? MinLearningRate { get; set; }
    public int WarmupSteps { get; set; } = 100;
    public double WeightDecay { get; set; } = 0.1;
    public double Beta1 { get; set; } = 0.9;
    public double Beta2 { get; set; } = 0.95;
    public double Epsilon { get; set; } = 1e-8;
    /// <summary>Gradients are rescaled so that their global L2 norm is at most this; 0 disables clipping.</summary>
    public double MaxGradNorm { get; set; } = 1.0;
    /// <summary>Run forward and backward in bfloat16 with float32 master weights in the optimizer.</summary>
    public bool UseBf16 { get; set; }
    /// <summary>Evaluate on the validation blocks every this many steps (and at the end); 0 only at the end.</summary>
    public int EvalInterval { get; set; }
    /// <summary>Validation batches per evaluation; null uses every validation block.</summary>
    public int? EvalBatches { get; set; }
    /// <summary>Where checkpoints go (folders <c>checkpoint-NNNNNN</c>); null keeps none.</summary>
    public string? CheckpointFolder { get; set; }
    /// <summary>Save a checkpoint every this many steps (and at the end, and when cancelled); 0 only then.</summary>
    public int CheckpointInterval { get; set; }
    /// <summary>How many of the newest checkpoints to keep.</summary>
    public int KeepCheckpoints { get; set; } = 2;
    /// <summary>
    /// Continue from the newest checkpoint in <see cref="CheckpointFolder"/> when there is one (the default). When false,
    /// the run starts over and deletes the folder's existing checkpoints.
    /// </summary>
    public bool Resume { get; set; } = true;
    /// <summary>Seeds batch order and dropout: the same seed gives the same run.</summary>
    public long Seed { get; set; }

    public void Validate()
    {
        static void Positive(double value, string name) { if (!(value > 0)) throw new ArgumentOutOfRangeException(name, value, "must be positive"); }
        static void NotNegative(double value, string name) { if (!(value >= 0)) throw new ArgumentOutOfRangeException(name, value, "must not be negative"); }
        Positive(MaxSteps, nameof(MaxSteps));
        Positive(BatchSize, nameof(BatchSize));
        Positive(GradientAccumulationSteps, nameof(GradientAccumulationSteps));
        Positive(LearningRate, nameof(LearningRate));
        if (MinLearningRate is { } min) NotNegative(min, nameof(MinLearningRate));
        NotNegative(WarmupSteps, nameof(WarmupSteps));
        NotNegative(WeightDecay, nameof(WeightDecay));
        NotNegative(MaxGradNorm, nameof(MaxGradNorm));
        NotNegative(EvalInterval, nameof(EvalInterval));
        NotNegative(CheckpointInterval, nameof(CheckpointInterval));
        Positive(KeepCheckpoints, nameof(KeepCheckpoints));
        if (EvalBatches is { } e) Positive(e, nameof(EvalBatches));
    }
}

/// <summary>Reported after every optimizer step; <paramref name="Metrics"/> are the method's own figures of the step (null when it has none).</summary>
public sealed record TrainingProgress(int Step, int TotalSteps, double Loss, double LearningRate, double TokensPerSecond,
    TimeSpan Elapsed, TimeSpan Eta, double? ValidationLoss, IReadOnlyDictionary<string, double>? Metrics = null);

/// <summary>What a training run did.</summary>
public sealed record TrainingResult(int Steps, double FinalLoss, double? ValidationLoss, string? LastCheckpoint,
    IReadOnlyList<double> LossHistory, IReadOnlyList<(int Step, double Loss)> ValidationHistory);

/// <summary>The loss or gradient became NaN or infinite; the last checkpoint written before that is left as it was.</summary>
public sealed class TrainingDivergedException(int step, string? lastCheckpoint, string message) : Exception(message)
{
    public int Step { get; } = step;
    public string? LastCheckpoint { get; } = lastCheckpoint;
}
