using MLNetPeft.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Houlsby;

/// <summary>
/// One bottleneck adapter on the output projection of a block: y ← y + up(f(down(y))), registered under the
/// projection as <c>adapter.{name}.down</c> [bottleneck, hidden] and <c>adapter.{name}.up</c> [hidden, bottleneck].
/// Applied by a forward hook, so it acts on the block's output before the residual connection adds it, where the
/// paper puts it.
/// </summary>
public sealed class BottleneckAdapter
{
    private readonly nn.Module<Tensor, Tensor> _layer;
    private readonly Linear _down, _up;
    private readonly string _adapterName, _nonLinearity;
    private readonly Action _removeHook;

    internal BottleneckAdapter(string moduleName, nn.Module<Tensor, Tensor> layer, long hidden, HoulsbyConfig config, string adapterName, Generator generator)
    {
        ModuleName = moduleName;
        _layer = layer;
        _adapterName = adapterName;
        _nonLinearity = config.NonLinearity;
        long bottleneck = Math.Max(1, hidden / config.ReductionFactor);
        var reference = layer.parameters().First();
        _down = nn.Linear(hidden, bottleneck, dtype: reference.dtype, device: reference.device);
        _up = nn.Linear(bottleneck, hidden, dtype: reference.dtype, device: reference.device);
        using (no_grad())
        {
            // Near-identity: small weights (N(0, σ²) truncated at 2σ, as in the paper) and zero biases.
            foreach (var w in new[] { _down.weight!, _up.weight! })
                w.copy_(w.normal_(0, 1, generator).clamp_(Scalars.Of(-2.0), Scalars.Of(2.0)).Times(config.InitStd));
            _down.bias!.zero_();
            _up.bias!.zero_();
        }
        TargetModules.RegisterAdapterChild(layer, "adapter", adapterName, new Container("Adapter", ("down", _down), ("up", _up)));
        var hook = layer.register_forward_hook((_, _, output) => Enabled ? output.Plus(Bottleneck(output)) : output);
        _removeHook = hook.remove;
    }

    public string ModuleName { get; }
    public bool Enabled { get; set; } = true;
    public Linear Down => _down;
    public Linear Up => _up;

    private Tensor Bottleneck(Tensor y)
    {
        var h = _down.call(y);
        h = _nonLinearity switch { "gelu" => nn.functional.gelu(h), "swish" => nn.functional.silu(h), _ => nn.functional.relu(h) };
        return _up.call(h);
    }

    internal void Remove()
    {
        _removeHook();
        TargetModules.RemoveAdapterChild(_layer, "adapter", _adapterName);
    }
}
