using MLNetPeft.Tuners.QLora;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Tests;

public class Nf4Tests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public void TheCodeTableIsBitsandbytesNf4AndFollowsFromNormalQuantiles()
    {
        var derived = Nf4.DeriveCode();
        Assert.Equal(16, Nf4.Code.Length);
        Assert.Equal(0f, Nf4.Code[7]);
        for (int i = 0; i < 16; i++)
        {
            // bitsandbytes normalises float32 quantiles in float32 (a few ulps, about 6e-8 each near 0.7); Acklam's Φ⁻¹ is good to 1e-9.
            Assert.True(Math.Abs(derived[i] - Nf4.Code[i]) < 2.5e-7, $"code {i}: derived {derived[i]:R}, table {Nf4.Code[i]:R}");
        }
    }

    [Fact]
    public void CodeValuesTimesTheirBlockScaleSurviveExactlyAndPackTwoPerByte()
    {
        var values = Nf4.Code.Concat(Nf4.Code.Reverse()).Select(v => v * 2.5f).ToArray();   // 32 values, absmax 2.5
        var q = Nf4.Quantize(tensor(values).view(4, 8), blockSize: 32);
        Assert.Equal(16, q.Packed.Length);
        Assert.Equal([2.5f], q.Absmax);
        Assert.Equal(0x01, q.Packed[0]);   // codes 0 and 1: the first in the high nibble
        TensorAssert.BitIdentical(tensor(values).view(4, 8), q.Dequantize());
    }

    [Fact]
    public void NormalWeightsQuantiseWithinHalfTheCodeGapAndCostFourAndAHalfBits()
    {
        var weight = randn([256, 384], generator: new Generator(1));
        var q = Nf4.Quantize(weight);
        var restored = q.Dequantize();
        Assert.Equal(weight.shape, restored.shape);
        // Each element lands on its nearest code: the error is at most half the widest gap (−1 to −0.696) times its block's absmax.
        double halfGap = Enumerable.Range(0, 15).Max(i => Nf4.Code[i + 1] - Nf4.Code[i]) / 2.0;
        var blocks = weight.flatten().view(-1, 64);
        var bound = blocks.abs().amax([1], keepdim: true) * (halfGap + 1e-6);
        var error = (restored.flatten().view(-1, 64) - blocks).abs();
        Assert.True(error.le(bound).all().item<bool>(), $"largest error {error.max().item<float>()}");
        double rmse = error.pow(2).mean().sqrt().item<float>();
        output.WriteLine($"RMSE {rmse:F4} on N(0, 1), bits per parameter {q.BitsPerParameter:F3}");
        Assert.InRange(rmse, 0.05, 0.12);   // NF4 on N(0, 1) with blocks of 64: about 0.1
        Assert.Equal(4.5, q.BitsPerParameter, 6);    // 4 bits + a float32 scale per 64 weights
    }

    [Fact]
    public void ZeroBlocksAndPaddingAreHandled()
    {
        var weight = zeros(70);
        weight[69] = tensor(-3f);
        var q = Nf4.Quantize(weight);
        Assert.Equal(2, q.Absmax.Length);
        TensorAssert.BitIdentical(weight, q.Dequantize());
        Assert.Throws<ArgumentOutOfRangeException>(() => Nf4.Quantize(weight, blockSize: 63));
    }
}
