using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.QLora;

/// <summary>
/// y = x · dequant(W)ᵀ for an NF4-quantised, frozen W, as bitsandbytes' MatMul4Bit computes it: the weight is
/// dequantised for the product and dropped at once, and dequantised again in the backward pass for ∂L/∂x = ∂L/∂y · W.
/// An ordinary linear would keep every layer's dequantised weight alive from the forward to the backward pass, so one
/// QLoRA step would hold the whole model in full precision. The product runs in the compute dtype
/// (bnb_4bit_compute_dtype) and the result takes the input's dtype. W gets no gradient (it is frozen).
/// </summary>
internal sealed class Nf4MatMul : torch.autograd.SingleTensorFunction<Nf4MatMul>
{
    public override string Name => nameof(Nf4MatMul);

    /// <summary>x · dequant(<paramref name="weight"/>)ᵀ, with <paramref name="computeDtype"/> for the product.</summary>
    public static Tensor Apply(Tensor x, Nf4Tensor weight, ScalarType computeDtype) => apply(x, weight, computeDtype);

    public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var x = (Tensor)vars[0];
        var weight = (Nf4Tensor)vars[1];
        var computeDtype = (ScalarType)vars[2];
        ctx.save_data("weight", weight);
        ctx.save_data("dtype", computeDtype);
        ctx.save_data("input_dtype", x.dtype);
        using var scope = NewDisposeScope();
        var w = weight.Dequantize(computeDtype, x.device);
        return x.to(computeDtype).matmul(w.t()).to(x.dtype).MoveToOuterDisposeScope();
    }

    public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor gradOutput)
    {
        var weight = (Nf4Tensor)ctx.get_data("weight");
        var computeDtype = (ScalarType)ctx.get_data("dtype");
        var inputDtype = (ScalarType)ctx.get_data("input_dtype");
        using var scope = NewDisposeScope();
        var w = weight.Dequantize(computeDtype, gradOutput.device);
        // One entry per argument of forward (TorchSharp's rule): the quantised weight and the dtype get none.
        return [gradOutput.to(computeDtype).matmul(w).to(inputDtype).MoveToOuterDisposeScope(), null!, null!];
    }
}
