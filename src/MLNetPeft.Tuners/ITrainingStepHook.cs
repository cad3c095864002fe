using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners;

/// <summary>
/// A tuning method that takes part in every training step (AdaLoRA: an orthogonality penalty in the loss, and the
/// rank allocation after each optimizer step). The trainer calls it; methods without such needs do not implement it.
/// </summary>
public interface ITrainingStepHook
{
    /// <summary>A term added to each micro-batch's loss (e.g. a regulariser), or null.</summary>
    Tensor? AdditionalLoss();

    /// <summary>Called after the optimizer has updated the weights for <paramref name="globalStep"/> (1-based), before gradients are cleared.</summary>
    void AfterOptimizerStep(int globalStep);

    /// <summary>
    /// The method's own training state beyond the model's weights (AdaLoRA: its importance averages and rank pattern),
    /// which a checkpoint must hold for a resumed run to continue exactly: tensors, and the rest as JSON.
    /// </summary>
    (IReadOnlyDictionary<string, Tensor> Tensors, JsonObject? Json) TrainingState() => (new Dictionary<string, Tensor>(), null);

    /// <summary>Restores what <see cref="TrainingState"/> gave when the checkpoint was written.</summary>
    void RestoreTrainingState(IReadOnlyDictionary<string, Tensor> tensors, JsonObject? json) { }
}
