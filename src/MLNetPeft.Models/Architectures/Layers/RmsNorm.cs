using MLNetPeft.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Architectures.Layers;

/// <summary>
/// Root-mean-square layer norm (Zhang and Sennrich 2019), as Llama uses it: x / sqrt(mean(x²) + eps) · weight,
/// computed in float32 whatever the input dtype, then cast back before the weight (HF's order).
/// </summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    /// <inheritdoc cref="PretrainedModule.RegisterComponents"/>
    protected override void RegisterComponents() { }

    // Named as registered: TorchSharp's Module.to() replaces parameters and re-points fields of the same name.
#pragma warning disable IDE1006
    private Parameter weight;
#pragma warning restore IDE1006
    private readonly double _eps;

    public RmsNorm(long size, double eps) : base(nameof(RmsNorm))
    {
        _eps = eps;
        weight = (Parameter)nn.Parameter(ones(size)).DetachFromDisposeScope();
        register_parameter(nameof(weight), weight);
    }

    public Parameter Weight => weight;

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var input = x.to(ScalarType.Float32);
        var normalized = input * rsqrt(input.Power(2).mean([-1L], keepdim: true).Plus(_eps));
        return (weight * normalized.to(x.dtype)).MoveToOuterDisposeScope();
    }
}
