using Microsoft.ML;
using MLNetPeft.ML;
using MLNetPeft.Training;

namespace MLNetPeft.Hosting.Training;

/// <summary>Where a hosted training job keeps its state and its result.</summary>
public sealed class TrainingJobOptions
{
    /// <summary>The fitted model zip (written atomically when the fit completes); relative paths are read from the content root.</summary>
    public string? OutputPath { get; set; }
    /// <summary>The job's checkpoints: written when the host stops mid-run and read when it starts again.</summary>
    public string? CheckpointFolder { get; set; }
    /// <summary>Do not train again when <see cref="OutputPath"/> exists already (the default), so a finished job stays finished.</summary>
    public bool SkipWhenOutputExists { get; set; } = true;
    /// <summary>Log the progress every this many optimizer steps (and the first and the last step).</summary>
    public int LogInterval { get; set; } = 10;

    internal void Validate(string jobName)
    {
        if (string.IsNullOrWhiteSpace(OutputPath))
            throw new ArgumentException($"Training job '{jobName}': OutputPath is required (where the fitted model zip is written).", nameof(OutputPath));
        if (string.IsNullOrWhiteSpace(CheckpointFolder))
            throw new ArgumentException($"Training job '{jobName}': CheckpointFolder is required (what a stopped job resumes from).", nameof(CheckpointFolder));
        if (LogInterval < 1) throw new ArgumentOutOfRangeException(nameof(LogInterval), LogInterval, $"Training job '{jobName}': must be at least 1.");
    }
}

/// <summary>What a job fits: an estimator, its training data, and the context that saves the result with the data's schema.</summary>
public sealed class TrainingJobPlan
{
    public required MLContext MLContext { get; init; }
    public required IEstimator<ITransformer> Estimator { get; init; }
    public required IDataView TrainingData { get; init; }
    /// <summary>What the plan loaded for the fit (a base model, say): disposed once the model is saved or the run stops.</summary>
    public IReadOnlyList<IDisposable> Resources { get; init; } = [];
}

/// <summary>
/// Given to the job's plan factory: <see cref="Configure{T}"/> wires an estimator's options to the host (the checkpoint
/// folder, progress into the log and the job's status, and the host's stopping token).
/// </summary>
public sealed class TrainingJobContext
{
    private readonly IProgress<TrainingProgress> _progress;

    internal TrainingJobContext(string name, string checkpointFolder, IProgress<TrainingProgress> progress, CancellationToken stoppingToken)
    {
        Name = name;
        CheckpointFolder = checkpointFolder;
        _progress = progress;
        StoppingToken = stoppingToken;
    }

    public string Name { get; }
    /// <summary>The job's checkpoint folder, as a full path.</summary>
    public string CheckpointFolder { get; }
    /// <summary>Cancelled when the host stops.</summary>
    public CancellationToken StoppingToken { get; }
    /// <summary>The newest checkpoint the fit will resume from, or null for a fresh start.</summary>
    public string? ResumesFrom => Trainer.LatestCheckpoint(CheckpointFolder);

    /// <summary>
    /// Sets <paramref name="options"/>' checkpoint folder (resume on), progress (the host's, after any progress already
    /// set) and cancellation token (the host's), and returns them.
    /// </summary>
    /// <exception cref="ArgumentException">The options name another checkpoint folder, or turn resuming off.</exception>
    public T Configure<T>(T options) where T : ITrainingRunOptions
    {
        ArgumentNullException.ThrowIfNull(options);
        var training = options.Training ?? throw new ArgumentException("Training must be set.", nameof(options));
        if (training.CheckpointFolder is { } own && !string.Equals(Path.GetFullPath(own), CheckpointFolder, StringComparison.Ordinal))
            throw new ArgumentException($"Training job '{Name}': Training.CheckpointFolder is '{own}', but the job's is {CheckpointFolder}; leave it unset.", nameof(options));
        if (!training.Resume)
            throw new ArgumentException($"Training job '{Name}': Training.Resume is false, so a restarted host would start over; leave it true.", nameof(options));
        training.CheckpointFolder = CheckpointFolder;
        var user = options.Progress;
        options.Progress = user is null ? _progress : SynchronousProgress.Create<TrainingProgress>(p => { user.Report(p); _progress.Report(p); });
        options.CancellationToken = StoppingToken;
        return options;
    }
}

/// <summary>Where a job stands.</summary>
public enum TrainingJobState
{
    Pending,
    Running,
    /// <summary>The model was fitted and saved.</summary>
    Completed,
    /// <summary>The output existed when the host started, so nothing was trained.</summary>
    Skipped,
    /// <summary>The host stopped the run; the checkpoint written then is where the next start resumes.</summary>
    Stopped,
    Failed,
}

/// <summary>The state of one hosted training job (a keyed singleton by job name), e.g. for a health check or a status page.</summary>
public sealed class TrainingJobStatus
{
    private readonly TaskCompletionSource<TrainingJobState> _finished = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile TrainingProgress? _last;

    internal TrainingJobStatus(string name, string outputPath, string checkpointFolder)
    {
        Name = name;
        OutputPath = outputPath;
        CheckpointFolder = checkpointFolder;
    }

    public string Name { get; }
    /// <summary>The model zip, as a full path.</summary>
    public string OutputPath { get; }
    /// <summary>The checkpoint folder, as a full path.</summary>
    public string CheckpointFolder { get; }
    public TrainingJobState State { get; private set; }
    /// <summary>The last step's progress, or null before the first step.</summary>
    public TrainingProgress? LastProgress => _last;
    /// <summary>The checkpoint this run resumed from, or null when it started fresh.</summary>
    public string? ResumedFrom { get; internal set; }
    /// <summary>Why the job failed, when it did.</summary>
    public Exception? Error { get; private set; }
    /// <summary>Completes with the final state (completed, skipped, stopped or failed).</summary>
    public Task<TrainingJobState> Finished => _finished.Task;

    internal void Report(TrainingProgress progress) => _last = progress;
    internal void Start() => State = TrainingJobState.Running;

    internal void Finish(TrainingJobState state, Exception? error = null)
    {
        State = state;
        Error = error;
        _finished.TrySetResult(state);
    }
}
