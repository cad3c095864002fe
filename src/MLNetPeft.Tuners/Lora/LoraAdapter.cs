using MLNetPeft.Architectures;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Lora;

/// <summary>
/// A LoRA adapter attached to one linear layer (nn.Linear, or GPT-2's Conv1D whose weight is stored [in, out]).
/// The layer itself is left in place; a forward hook adds B·A·dropout(x)·scaling to its output, and the adapter's
/// weights are registered under the layer as <c>lora_A.{adapter}.weight</c> [r, in] and <c>lora_B.{adapter}.weight</c>
/// [out, r], PEFT's names.
/// </summary>
public sealed class LoraAdapter : IDisposable
{
    private readonly nn.Module<Tensor, Tensor> _layer;
    private readonly Linear _a, _b;
    private readonly double _dropout;
    private readonly Action _removeHook;

    internal LoraAdapter(string moduleName, nn.Module<Tensor, Tensor> layer, LoraConfig config, string adapterName, Generator generator)
    {
        ModuleName = moduleName;
        _layer = layer;
        (InFeatures, OutFeatures, FanInFanOut) = layer switch
        {
            Linear l => (l.in_features, l.out_features, false),
            Conv1D c => (c.Weight.shape[0], c.Weight.shape[1], true),
            _ => throw new NotSupportedException($"LoRA cannot wrap '{moduleName}' ({layer.GetType().Name}); it supports linear layers (Linear, Conv1D)."),
        };
        Scaling = config.Scaling;
        _dropout = config.LoraDropout;
        var weight = BaseWeight;
        _a = nn.Linear(InFeatures, config.R, hasBias: false, device: weight.device, dtype: weight.dtype);
        _b = nn.Linear(config.R, OutFeatures, hasBias: false, device: weight.device, dtype: weight.dtype);
        using (no_grad())
        {
            if (config.InitLoraWeights == "gaussian") _a.weight!.normal_(0, 1.0 / config.R, generator);
            else
            {
                // PEFT's default: kaiming_uniform_(a=√5) on A, i.e. U(−b, b) with b = √(6 / ((1 + 5)·fan_in)) = 1/√in.
                double bound = 1.0 / Math.Sqrt(InFeatures);
                _a.weight!.uniform_(-bound, bound, generator);
            }
            _b.weight!.zero_();
        }
        layer.register_module("lora_A", new Architectures.Layers.Container("ModuleDict", (adapterName, _a)));
        layer.register_module("lora_B", new Architectures.Layers.Container("ModuleDict", (adapterName, _b)));
        var hook = layer.register_forward_hook((_, input, output) => Enabled && !Merged ? output + Delta(input) : output);
        _removeHook = hook.remove;
    }

    public string ModuleName { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }
    /// <summary>True for GPT-2's Conv1D, whose weight is [in, out] (PEFT's fan_in_fan_out).</summary>
    public bool FanInFanOut { get; }
    public double Scaling { get; }
    /// <summary>Whether the adapter contributes to the layer's output (false reproduces the base layer exactly).</summary>
    public bool Enabled { get; set; } = true;
    /// <summary>Whether ΔW has been added into the base weight (the hook then adds nothing).</summary>
    public bool Merged { get; private set; }
    public Parameter LoraA => _a.weight!;
    public Parameter LoraB => _b.weight!;
    public Parameter BaseWeight => _layer switch { Linear l => l.weight!, Conv1D c => c.Weight, _ => throw new InvalidOperationException() };
    public Parameter? BaseBias => _layer switch { Linear l => l.bias, Conv1D c => c.Bias, _ => null };

    private Tensor Delta(Tensor input)
    {
        var x = _dropout > 0 ? nn.functional.dropout(input, _dropout, _layer.training) : input;
        return _b.call(_a.call(x)) * Scaling;
    }

    /// <summary>ΔW = B·A·scaling in the base weight's layout (transposed for Conv1D).</summary>
    public Tensor DeltaWeight()
    {
        var delta = _b.weight!.matmul(_a.weight!) * Scaling;
        return FanInFanOut ? delta.t() : delta;
    }

    /// <summary>Adds ΔW into the base weight; refuses when the result would not be finite (PEFT's safe merge).</summary>
    public void Merge()
    {
        if (Merged) return;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var merged = BaseWeight + DeltaWeight();
        if (!merged.isfinite().all().item<bool>())
            throw new InvalidOperationException($"Merging the LoRA adapter of '{ModuleName}' would give non-finite weights; the model was left unmerged.");
        BaseWeight.copy_(merged);
        Merged = true;
    }

    /// <summary>Subtracts ΔW from the base weight again.</summary>
    public void Unmerge()
    {
        if (!Merged) return;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        BaseWeight.sub_(DeltaWeight());
        Merged = false;
    }

    /// <summary>Detaches the hook (the registered adapter weights stay on the layer until it is unloaded).</summary>
    public void Dispose() => _removeHook();
}
