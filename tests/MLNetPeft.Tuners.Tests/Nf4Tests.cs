using MLNetPeft.Tuners.QLora;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Tests;

public class Nf4Tests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public void TheCodeTableIsBitsandbytesNf4AndFollowsFromNormalQuantiles()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
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
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var values = Nf4.Code.Concat(Nf4.Code.Reverse()).Select(v => v * 2.5f).ToArray();   // 32 values, absmax 2.5
        var q = Nf4.Quantize(tensor(values).view(4, 8), blockSize: 32, doubleQuant: false);
        Assert.Equal(16, q.Packed.Length);
        Assert.Equal([2.5f], q.Absmax!);
        Assert.Equal(0x01, q.Packed[0]);   // codes 0 and 1: the first in the high nibble
        TensorAssert.BitIdentical(tensor(values).view(4, 8), q.Dequantize());
    }

    [Fact]
    public void NormalWeightsQuantiseWithinHalfTheCodeGapAndCostFourAndAHalfBits()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var weight = randn([256, 384], generator: new Generator(1));
        var q = Nf4.Quantize(weight, doubleQuant: false);
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
    public void TheDynamicMapIsBitsandbytesSigned8BitMap()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var map = Nf4.DynamicMap();
        Assert.Equal(256, map.Length);
        Assert.Equal(map.Order(), map);
        Assert.Equal(1f, map[^1]);
        Assert.Contains(0f, map);
        Assert.Equal(-0.99296875f, map[0], 6);            // −(1 + 0.98593750)/2: the last of 64 fractions of the 10⁰ decade
        Assert.Equal(5.5e-7f, map.Where(v => v > 0).Min(), 9);   // 10⁻⁶ · (0.1 + 1)/2
        Assert.Equal(map.Count(v => v > 0) - 1, map.Count(v => v < 0));   // symmetric but for the extra 1
    }

    [Fact]
    public void DoubleQuantisationCostsAbout4Point13BitsAndBarelyAddsError()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var weight = randn([512, 1024], generator: new Generator(2));
        var single = Nf4.Quantize(weight, doubleQuant: false);
        var twice = Nf4.Quantize(weight);
        Assert.Null(twice.Absmax);
        // 4 + 8/64 + 32/(64·256) + 32/(512·1024) bits per weight.
        Assert.Equal(4 + 8.0 / 64 + 32.0 / (64 * 256) + 32.0 / (512 * 1024), twice.BitsPerParameter, 9);
        var scales = single.Absmax!;
        var restored = twice.BlockScales();
        double worst = scales.Zip(restored).Max(x => Math.Abs(x.First - x.Second) / x.First);
        double rmseSingle = (single.Dequantize() - weight).pow(2).mean().sqrt().item<float>();
        double rmseTwice = (twice.Dequantize() - weight).pow(2).mean().sqrt().item<float>();
        output.WriteLine($"bits per weight {twice.BitsPerParameter:F4}; absmax relative error up to {worst:P2}; RMSE {rmseSingle:F5} -> {rmseTwice:F5}");
        Assert.True(worst < 0.02, $"absmax relative error {worst:P2}");
        Assert.True(rmseTwice < rmseSingle * 1.02, $"RMSE {rmseSingle:F5} -> {rmseTwice:F5}");
    }

    [Fact]
    public void ZeroBlocksAndPaddingAreHandled()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var weight = zeros(70);
        weight[69] = tensor(-3f);
        var q = Nf4.Quantize(weight, doubleQuant: false);
        Assert.Equal(2, q.Absmax!.Length);
        TensorAssert.BitIdentical(weight, q.Dequantize());
        Assert.Throws<ArgumentOutOfRangeException>(() => Nf4.Quantize(weight, blockSize: 63));
    }
}
