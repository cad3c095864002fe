using MLNetPeft.Architectures;
using MLNetPeft.Tuners;
using static TorchSharp.torch;

namespace MLNetPeft.Training;

/// <summary>
/// The frozen reference that DPO, PPO and GRPO compare the policy with: the policy itself with its PEFT adapter
/// disabled (<see cref="PeftModel.DisableAdapters"/>, no second copy in memory), or, for full fine-tuning, a frozen
/// copy of the starting model. It always runs in eval mode without gradients.
/// </summary>
public sealed class ReferenceModel
{
    private readonly CausalLanguageModel _policy;
    private readonly PeftModel? _adapter;
    private readonly CausalLanguageModel? _frozenCopy;

    /// <param name="method">The method that needs the reference, named in errors.</param>
    /// <param name="policy">The model that learns.</param>
    /// <param name="adapter">The PEFT method applied to <paramref name="policy"/>: the reference is the policy with it disabled.</param>
    /// <param name="frozenCopy">For full fine-tuning: a frozen copy of the policy as it starts (never trained).</param>
    public ReferenceModel(string method, CausalLanguageModel policy, PeftModel? adapter, CausalLanguageModel? frozenCopy)
    {
        _policy = policy ?? throw new ArgumentNullException(nameof(policy));
        if (adapter is null == frozenCopy is null)
            throw new ArgumentException($"{method} needs one reference: the PEFT adapter applied to the policy (the reference is then the policy with " +
                "the adapter disabled), or, for full fine-tuning, a frozen copy of the starting model as referenceModel — not both, not neither.",
                adapter is null ? nameof(adapter) : "referenceModel");
        if (adapter is not null && !ReferenceEquals(adapter.Model, policy))
            throw new ArgumentException("The adapter was applied to another model than the policy.", nameof(adapter));
        if (ReferenceEquals(frozenCopy, policy))
            throw new ArgumentException("The reference model is the policy itself; pass a separate frozen copy (or the PEFT adapter).", "referenceModel");
        if (frozenCopy is not null && frozenCopy.Config.VocabSize != policy.Config.VocabSize)
            throw new ArgumentException($"The reference model's vocabulary ({frozenCopy.Config.VocabSize}) differs from the policy's ({policy.Config.VocabSize}).", "referenceModel");
        _adapter = adapter;
        _frozenCopy = frozenCopy;
    }

    /// <summary>Runs <paramref name="compute"/> on the reference: in eval mode, without gradients, adapters disabled or the frozen copy.</summary>
    public T Run<T>(Func<CausalLanguageModel, T> compute)
    {
        var model = _frozenCopy ?? _policy;
        bool wasTraining = model.training;
        using var _ = no_grad();
        using var disabled = _adapter?.DisableAdapters();
        model.eval();
        try
        {
            return compute(model);
        }
        finally
        {
            if (wasTraining) model.train();
        }
    }
}
