using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using static TorchSharp.torch;

namespace MLNetPeft.Training;

/// <summary>
/// The part of training that a method supplies to <see cref="Trainer"/>: which examples a micro-batch holds and how they
/// become a loss, and how the model is evaluated (HF's <c>Trainer.compute_loss</c> and <c>evaluate</c>, which TRL's
/// trainers override). The optimizer, schedule, accumulation, clipping, seeding, checkpoints with exact resume, the
/// NaN guard, progress and cancellation belong to the trainer, once for every method.
/// </summary>
public abstract class TrainingObjective
{
    /// <summary>The method, as the <c>mlnetpeft.objective</c> tag of <see cref="TrainingMetrics"/> names it (e.g. "sft", "dpo").</summary>
    public abstract string MethodName { get; }

    /// <summary>The model whose parameters that require grad are trained.</summary>
    public abstract PretrainedModule Model { get; }

    /// <summary>How many training examples there are (recorded in checkpoints with <see cref="DataFingerprint"/>).</summary>
    public abstract int ExampleCount { get; }

    /// <summary>SHA-256 of the training data: a checkpoint resumes only a run on the same data.</summary>
    public abstract string DataFingerprint();

    /// <summary>
    /// The loss of micro-batch <paramref name="micro"/> of optimizer step <paramref name="step"/> (both from 0), or null
    /// when that micro-batch holds nothing to learn. The batch may depend only on the step, the micro-batch and
    /// <paramref name="sampler"/> (seeded from the run's seed and the step): that is what makes resuming exact. It runs
    /// inside the step's dispose scope, in train mode, with the step's dropout generator.
    /// </summary>
    public abstract BatchLoss? Loss(int step, int micro, Random sampler);

    /// <summary>The loss on the validation data (leaving the model in the mode it found it), or null when there is none.</summary>
    public virtual double? ValidationLoss() => null;

    /// <summary>
    /// The objective's own state beyond the weights that a checkpoint must hold for a resumed run to continue exactly
    /// (PPO: the rollout its updates are working through), or null when it has none. The trainer writes the tensors
    /// as they are when a checkpoint is taken; they stay the objective's.
    /// </summary>
    public virtual (IReadOnlyDictionary<string, Tensor> Tensors, JsonObject? Json)? TrainingState() => null;

    /// <summary>
    /// Restores what <see cref="TrainingState"/> gave (called only when the checkpoint holds such a state). The tensors
    /// belong to the trainer's scope: keep copies of what is needed.
    /// </summary>
    public virtual void RestoreTrainingState(IReadOnlyDictionary<string, Tensor> tensors, JsonObject? json) { }
}

/// <summary>
/// A micro-batch's loss (a float scalar that backpropagates), how many tokens the batch held, and the method's own
/// figures of the batch (e.g. DPO's rewards/margins), which the trainer averages over a step's micro-batches.
/// </summary>
public sealed record BatchLoss(Tensor Loss, long Tokens, IReadOnlyDictionary<string, double>? Metrics = null);
