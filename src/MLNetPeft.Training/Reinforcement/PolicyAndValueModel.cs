using MLNetPeft.Architectures;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Reinforcement;

/// <summary>
/// The policy and its value model as one module, so that one optimizer and one checkpoint hold both (TRL's
/// <c>PolicyAndValueWrapper</c>): their parameters are named <c>policy.…</c> and <c>value.…</c>. The two must not share
/// a parameter: the critic's updates would otherwise move the policy.
/// </summary>
public sealed class PolicyAndValueModel : PretrainedModule
{
    public PolicyAndValueModel(CausalLanguageModel policy, CausalLmForSequenceClassification value) : base(nameof(PolicyAndValueModel))
    {
        Policy = policy ?? throw new ArgumentNullException(nameof(policy));
        Value = value ?? throw new ArgumentNullException(nameof(value));
        if (value.NumLabels != 1) throw new ArgumentException($"A value model has one output (num_labels = 1); this one has {value.NumLabels}.", nameof(value));
        var policyParameters = new HashSet<IntPtr>(policy.parameters().Select(p => p.Handle));
        if (value.parameters().Any(p => policyParameters.Contains(p.Handle)))
            throw new ArgumentException("The value model shares weights with the policy; give it its own copy of the backbone (TRL's critic is a separate model).", nameof(value));
        register_module("policy", policy);
        register_module("value", value);
    }

    public CausalLanguageModel Policy { get; }
    public CausalLmForSequenceClassification Value { get; }
    public override ModelConfig Config => Policy.Config;
}
