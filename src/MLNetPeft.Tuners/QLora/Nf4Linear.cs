using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.QLora;

/// <summary>
/// An nn.Linear whose weight lives NF4-quantised: between calls the layer holds a zero-stride placeholder of the
/// weight's shape (4 bytes), and a forward pre-hook dequantises the weight to the compute dtype just for the call
/// (bitsandbytes' Linear4bit does the same on the fly). The weight is frozen; the bias, if any, stays as it is.
/// </summary>
public sealed class Nf4Linear
{
    private readonly Linear _layer;
    private readonly Action _removePreHook, _removeHook;

    internal Nf4Linear(string moduleName, Linear layer, Nf4Tensor weight)
    {
        ModuleName = moduleName;
        _layer = layer;
        Weight = weight;
        ComputeDtype = layer.weight!.dtype;
        SetPlaceholder();
        var pre = layer.register_forward_pre_hook((_, input) =>
        {
            _layer.weight = new Parameter(Weight.Dequantize(ComputeDtype, input.device), requires_grad: false);
            return input;
        });
        var post = layer.register_forward_hook((_, _, output) =>
        {
            // The call's autograd graph keeps its own reference to the dequantised weight for the backward pass.
            SetPlaceholder();
            return output;
        });
        _removePreHook = pre.remove;
        _removeHook = post.remove;
    }

    public string ModuleName { get; }
    public Nf4Tensor Weight { get; }
    /// <summary>The dtype the weight is dequantised to (bnb_4bit_compute_dtype); the layer's dtype when it was quantised.</summary>
    public ScalarType ComputeDtype { get; }
    public Linear Layer => _layer;

    private void SetPlaceholder()
    {
        var device = _layer.weight!.device;
        _layer.weight = new Parameter(zeros(1, dtype: ComputeDtype, device: device).expand(Weight.Shape), requires_grad: false);
    }

    /// <summary>Puts the dequantised weight back as an ordinary (frozen) parameter and removes the hooks.</summary>
    internal void Dequantize()
    {
        _removePreHook();
        _removeHook();
        _layer.weight = new Parameter(Weight.Dequantize(ComputeDtype, _layer.weight!.device), requires_grad: false);
    }
}
