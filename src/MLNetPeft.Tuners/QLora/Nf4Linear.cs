using MLNetPeft.Runtime;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.QLora;

/// <summary>
/// An nn.Linear whose weight lives NF4-quantised (transformers' Linear4bit). The layer keeps a zero-size placeholder
/// weight [out, 0]; a forward pre-hook hands nn.Linear an empty input (so it computes only the bias) and a forward hook
/// adds x · dequant(W)ᵀ through <see cref="Nf4MatMul"/>, which holds no dequantised weight between the forward and
/// backward passes. Codes and scales live on the layer's device. Adapters on the layer (LoRA) read its real input
/// through <see cref="TargetModules"/>. The weight is frozen; the bias, if any, stays as it is.
/// </summary>
public sealed class Nf4Linear
{
    private readonly Linear _layer;
    private readonly Action _removePreHook, _removeHook, _removeAfterCall;

    internal Nf4Linear(string moduleName, Linear layer, Nf4Tensor weight, ScalarType? computeDtype = null)
    {
        ModuleName = moduleName;
        _layer = layer;
        var device = layer.weight!.device;
        WeightDtype = layer.weight.dtype;
        ComputeDtype = computeDtype ?? WeightDtype;
        Weight = weight.To(device);
        SetPlaceholder(device);
        TargetModules.MarkQuantized(layer, Weight.Shape.Aggregate(1L, (a, b) => a * b));
        var pre = layer.register_forward_pre_hook((_, input) =>
        {
            TargetModules.SetCallInput(_layer, input);
            return input.narrow(-1, 0, 0);
        });
        // Added to whatever the layer's output holds (its bias), so other hooks may run before or after this one.
        var post = layer.register_forward_hook((_, input, output) => output.Plus(Nf4MatMul.Apply(TargetModules.CallInput(_layer, input), Weight, ComputeDtype)));
        // After every hook of the call: the input is not kept alive until the next one.
        var after = layer.register_forward_hook(_ => TargetModules.SetCallInput(_layer, null));
        _removePreHook = pre.remove;
        _removeHook = post.remove;
        _removeAfterCall = after.remove;
    }

    public string ModuleName { get; }
    public Nf4Tensor Weight { get; }
    /// <summary>The dtype the product runs in (bnb_4bit_compute_dtype): float32 or bfloat16.</summary>
    public ScalarType ComputeDtype { get; }
    /// <summary>The dtype the weight had before quantisation (what dequantising for a merge gives back).</summary>
    public ScalarType WeightDtype { get; }
    public Linear Layer => _layer;

    private void SetPlaceholder(Device device) =>
        _layer.weight = (Parameter)new Parameter(empty([_layer.out_features, 0], dtype: WeightDtype, device: device), requires_grad: false).DetachFromDisposeScope();

    /// <summary>Puts the dequantised weight back as an ordinary (frozen) parameter and removes the hooks.</summary>
    internal void Dequantize()
    {
        _removePreHook();
        _removeHook();
        _removeAfterCall();
        TargetModules.UnmarkQuantized(_layer);
        _layer.weight = (Parameter)new Parameter(Weight.Dequantize(WeightDtype, _layer.weight!.device), requires_grad: false).DetachFromDisposeScope();
    }
}
