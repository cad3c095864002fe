using MLNetPeft.Runtime;
using MLNetPeft.Architectures;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Ia3;

/// <summary>
/// IA3 on one linear layer: a vector l that multiplies the layer's output ([out, 1], keys and values) or, for a
/// feed-forward layer, its input ([1, in], the FFN activation). Registered under the layer as
/// <c>ia3_l.{adapter}</c>, PEFT's name; applied by hooks, so the layer stays in place.
/// </summary>
public sealed class Ia3Layer
{
    private readonly nn.Module<Tensor, Tensor> _layer;
    private readonly string _adapterName;
    private readonly Action _removeHook;

    internal Ia3Layer(string moduleName, nn.Module<Tensor, Tensor> layer, bool isFeedforward, Ia3Config config, string adapterName, Generator generator)
    {
        ModuleName = moduleName;
        _layer = layer;
        _adapterName = adapterName;
        IsFeedforward = isFeedforward;
        (long inFeatures, long outFeatures, FanInFanOut) = TargetModules.Shape(layer, moduleName, "IA3");
        if (TargetModules.IsQuantized(layer))
            throw new NotSupportedException($"IA3 on '{moduleName}': the layer is NF4-quantised; IA3 applies to full-precision layers (QLoRA pairs NF4 with LoRA).");
        var weight = BaseWeight;
        long[] shape = isFeedforward ? [1, inFeatures] : [outFeatures, 1];
        Scale = new Parameter(config.InitIa3Weights
            ? ones(shape, dtype: weight.dtype, device: weight.device)
            : randn(shape, dtype: weight.dtype, generator: generator).to(weight.device));
        TargetModules.RegisterAdapterChild(layer, "ia3_l", adapterName, Scale);
        if (isFeedforward)
        {
            var hook = layer.register_forward_pre_hook((_, input) => Active ? input * Scale.flatten() : input);
            _removeHook = hook.remove;
        }
        else
        {
            var hook = layer.register_forward_hook((_, _, output) => Active ? output * Scale.flatten() : output);
            _removeHook = hook.remove;
        }
    }

    public string ModuleName { get; }
    public bool IsFeedforward { get; }
    public bool FanInFanOut { get; }
    /// <summary>The learned vector: [out, 1], or [1, in] for a feed-forward layer (PEFT's shapes).</summary>
    public Parameter Scale { get; }
    public bool Enabled { get; set; } = true;
    public bool Merged { get; private set; }
    private bool Active => Enabled && !Merged;
    private Parameter BaseWeight => TargetModules.Weight(_layer);
    private Parameter? BaseBias => TargetModules.Bias(_layer);

    /// <summary>The vector shaped to multiply the base weight in its own layout ([out, in], or [in, out] for Conv1D).</summary>
    private Tensor WeightFactor => FanInFanOut ? Scale.t() : Scale;

    /// <summary>What unmerging divides by: the vector plus 1e-8, as PEFT does, so that a zero entry gives no inf or NaN.</summary>
    private Tensor SafeDivisor(Tensor factor) => factor.Plus(1e-8);

    /// <summary>Folds l into the weight (rows for outputs, columns for inputs) and, for outputs, into the bias.</summary>
    public void Merge()
    {
        if (Merged) return;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var merged = BaseWeight * WeightFactor;
        if (!merged.isfinite().all().item<bool>())
            throw new InvalidOperationException($"Merging the IA3 vector of '{ModuleName}' would give non-finite weights; the model was left unmerged.");
        BaseWeight.copy_(merged);
        if (!IsFeedforward && BaseBias is { } bias) bias.mul_(Scale.flatten());
        Merged = true;
    }

    public void Unmerge()
    {
        if (!Merged) return;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        BaseWeight.div_(SafeDivisor(WeightFactor));
        if (!IsFeedforward && BaseBias is { } bias) bias.div_(SafeDivisor(Scale.flatten()));
        Merged = false;
    }

    internal void Remove()
    {
        _removeHook();
        TargetModules.RemoveAdapterChild(_layer, "ia3_l", _adapterName);
    }
}
