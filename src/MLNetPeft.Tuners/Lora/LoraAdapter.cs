using MLNetPeft.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Lora;

/// <summary>
/// A LoRA adapter attached to one linear layer (nn.Linear, or GPT-2's Conv1D whose weight is stored [in, out]).
/// The layer itself is left in place; a forward hook adds B·A·dropout(x)·scaling to its output, and the adapter's
/// weights are registered under the layer as <c>lora_A.{adapter}.weight</c> [r, in] and <c>lora_B.{adapter}.weight</c>
/// [out, r], PEFT's names. With DoRA a magnitude vector [out] is added as <c>lora_magnitude_vector.{adapter}.weight</c>
/// (saved without ".weight", as PEFT saves it).
/// Several adapters (different names) can sit on one layer; each adds its own term while enabled.
/// </summary>
public sealed class LoraAdapter : IDisposable
{
    private readonly nn.Module<Tensor, Tensor> _layer;
    private readonly Linear _a, _b;
    private readonly Parameter? _magnitude;
    private readonly double _dropout;
    private readonly string _adapterName;
    private Tensor? _mergedNorm;
    private readonly Action _removeHook;

    internal LoraAdapter(string moduleName, nn.Module<Tensor, Tensor> layer, LoraConfig config, string adapterName, Generator generator)
    {
        ModuleName = moduleName;
        _layer = layer;
        _adapterName = adapterName;
        (InFeatures, OutFeatures, FanInFanOut) = TargetModules.Shape(layer, moduleName, "LoRA");
        // rank_pattern and alpha_pattern may give this module its own r and alpha (PEFT's get_pattern_key).
        Rank = config.RankFor(moduleName);
        Scaling = config.ScalingFor(moduleName);
        _dropout = config.LoraDropout;
        var weight = BaseWeight;
        _a = nn.Linear(InFeatures, Rank, hasBias: false, device: weight.device, dtype: weight.dtype);
        _b = nn.Linear(Rank, OutFeatures, hasBias: false, device: weight.device, dtype: weight.dtype);
        using (no_grad())
        {
            if (config.InitLoraWeights == "gaussian") _a.weight!.normal_(0, 1.0 / Rank, generator);
            else
            {
                // PEFT's default: kaiming_uniform_(a=√5) on A, i.e. U(−b, b) with b = √(6 / ((1 + 5)·fan_in)) = 1/√in.
                double bound = 1.0 / Math.Sqrt(InFeatures);
                _a.weight!.uniform_(-bound, bound, generator);
            }
            // B starts at zero, so a fresh adapter changes nothing; with "false" it keeps nn.Linear's init (fan_in = r), as in PEFT.
            if (config.InitLoraWeights == "false") _b.weight!.uniform_(-1.0 / Math.Sqrt(Rank), 1.0 / Math.Sqrt(Rank), generator);
            else _b.weight!.zero_();
        }
        TargetModules.RegisterAdapterChild(layer, "lora_A", adapterName, _a);
        TargetModules.RegisterAdapterChild(layer, "lora_B", adapterName, _b);
        if (config.UseDora && TargetModules.IsQuantized(layer))
            throw new NotSupportedException($"DoRA needs the base weight of '{moduleName}', which is NF4-quantised here; use plain LoRA on quantised layers (QLoRA).");
        if (config.UseDora)
        {
            // m starts at ‖W‖ per output row, so a fresh DoRA adapter (B = 0) changes nothing.
            using (no_grad()) _magnitude = new Parameter(WeightNorm(DeltaWeight()).detach().clone());
            var holder = new Architectures.Layers.Container("DoraMagnitude");
            holder.register_parameter("weight", _magnitude);
            TargetModules.RegisterAdapterChild(layer, "lora_magnitude_vector", adapterName, holder);
        }
        var hook = layer.register_forward_hook((_, input, output) => Enabled && !Merged ? output.Plus(Delta(input)) : output);
        _removeHook = hook.remove;
    }

    public string ModuleName { get; }
    public long InFeatures { get; }
    public long OutFeatures { get; }
    /// <summary>True for GPT-2's Conv1D, whose weight is [in, out] (PEFT's fan_in_fan_out).</summary>
    public bool FanInFanOut { get; }
    /// <summary>This module's rank (r, or its rank_pattern entry).</summary>
    public int Rank { get; }
    /// <summary>This module's alpha / r (or alpha / √r with rsLoRA), with its patterns applied.</summary>
    public double Scaling { get; }
    /// <summary>Whether the adapter contributes to the layer's output (false reproduces the base layer exactly).</summary>
    public bool Enabled { get; set; } = true;
    /// <summary>Whether ΔW has been added into the base weight (the hook then adds nothing).</summary>
    public bool Merged { get; private set; }
    public bool UseDora => _magnitude is not null;
    /// <summary>DoRA's magnitude vector [out] (null without DoRA).</summary>
    public Parameter? Magnitude => _magnitude;
    public Parameter LoraA => _a.weight!;
    public Parameter LoraB => _b.weight!;
    public Parameter BaseWeight => TargetModules.Weight(_layer);
    public Parameter? BaseBias => TargetModules.Bias(_layer);

    private Tensor Delta(Tensor input)
    {
        var x = StepDropout.Apply(TargetModules.CallInput(_layer, input), _dropout, _layer.training);
        var lora = _b.call(_a.call(x)).Times(Scaling);
        if (_magnitude is null) return lora;
        // DoRA: the layer becomes m/‖W + ΔW‖ · (W + ΔW)x + bias; the hook adds the difference to the base output:
        // (m/‖W + ΔW‖ − 1)·Wx + m/‖W + ΔW‖·ΔWx, with the norm detached (DoRA §4.3).
        var scale = _magnitude / WeightNorm(DeltaWeight().detach()).detach();
        var baseOutput = FanInFanOut ? x.matmul(BaseWeight) : x.matmul(BaseWeight.t());
        return (scale.Plus(-1.0) * baseOutput).Plus(scale * lora);
    }

    /// <summary>‖W + ΔW‖ per output row (the base weight's layout handled).</summary>
    private Tensor WeightNorm(Tensor deltaWeight)
    {
        var combined = BaseWeight.Plus(deltaWeight);
        return (FanInFanOut ? combined.t() : combined).Power(2).sum(1).sqrt();
    }

    /// <summary>ΔW = B·A·scaling in the base weight's layout (transposed for Conv1D).</summary>
    public Tensor DeltaWeight()
    {
        var delta = _b.weight!.matmul(_a.weight!).Times(Scaling);
        return FanInFanOut ? delta.t() : delta;
    }

    /// <summary>Adds ΔW into the base weight; refuses when the result would not be finite (PEFT's safe merge).</summary>
    public void Merge()
    {
        if (Merged) return;
        if (TargetModules.IsQuantized(_layer))
            throw new InvalidOperationException($"'{ModuleName}' is NF4-quantised: dequantise the base (Nf4Model.Dequantize) before merging LoRA into it.");
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var merged = BaseWeight.Plus(DeltaWeight());
        Tensor? norm = null;
        if (_magnitude is not null)
        {
            // W' = m · (W + ΔW) / ‖W + ΔW‖, row by row; the norm is kept so that unmerging can divide it out again.
            norm = WeightNorm(DeltaWeight());
            var scale = (_magnitude / norm).unsqueeze(FanInFanOut ? 0 : 1);
            merged = merged * scale;
        }
        if (!merged.isfinite().all().item<bool>())
            throw new InvalidOperationException($"Merging the LoRA adapter of '{ModuleName}' would give non-finite weights; the model was left unmerged.");
        BaseWeight.copy_(merged);
        _mergedNorm = norm?.DetachFromDisposeScope();
        Merged = true;
    }

    /// <summary>Subtracts ΔW from the base weight again.</summary>
    public void Unmerge()
    {
        if (!Merged) return;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        if (_magnitude is not null)
        {
            BaseWeight.div_((_magnitude / _mergedNorm!).unsqueeze(FanInFanOut ? 0 : 1));
            _mergedNorm!.Dispose();
            _mergedNorm = null;
        }
        BaseWeight.sub_(DeltaWeight());
        Merged = false;
    }

    /// <summary>Detaches the hook and removes the adapter's weights from the layer.</summary>
    internal void Remove()
    {
        _removeHook();
        foreach (var group in new[] { "lora_A", "lora_B", "lora_magnitude_vector" }) TargetModules.RemoveAdapterChild(_layer, group, _adapterName);
    }

    /// <summary>Detaches the hook (the registered adapter weights stay on the layer until it is unloaded).</summary>
    public void Dispose() => _removeHook();
}
