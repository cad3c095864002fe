using MLNetPeft.Training;

namespace MLNetPeft.ML;

/// <summary>
/// The options of every estimator that fits with the library's training loop: its settings (checkpoints included), and
/// how a caller watches and stops a fit. A host sets the last two (and the checkpoint folder) to run a fit as a job.
/// </summary>
public interface ITrainingRunOptions
{
    /// <summary>Optimizer steps, batch size, checkpoints and the rest of the loop.</summary>
    TrainingOptions Training { get; }
    /// <summary>Progress after every optimizer step.</summary>
    IProgress<TrainingProgress>? Progress { get; set; }
    /// <summary>Stops the fit at the next step boundary, after writing a checkpoint when a checkpoint folder is set.</summary>
    CancellationToken CancellationToken { get; set; }
}
