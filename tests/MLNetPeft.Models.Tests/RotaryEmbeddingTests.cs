using MLNetPeft.Architectures.Layers;
using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

public class RotaryEmbeddingTests
{
    public static TheoryData<string> Kinds => ["default", "linear", "dynamic", "llama3", "yarn"];

    private static RopeScaling? Scaling(string kind) => kind switch
    {
        "default" => null,
        "linear" => new RopeScaling { RopeType = "linear", Factor = 2 },
        "dynamic" => new RopeScaling { RopeType = "dynamic", Factor = 2 },
        "llama3" => new RopeScaling { RopeType = "llama3", Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 16 },
        "yarn" => new RopeScaling { Type = "yarn", Factor = 4, OriginalMaxPositionEmbeddings = 16 },
        _ => throw new ArgumentException(kind),
    };

    private static Tensor Rotate(RotaryEmbedding rope, Tensor x, long position)
    {
        var (cos, sin) = rope.Compute(tensor(new[] { position }).unsqueeze(0), ScalarType.Float64);
        return RotaryEmbedding.Apply(x, cos, sin);
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void QueryKeyProductDependsOnlyOnRelativePosition(string kind)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var rope = new RotaryEmbedding(16, 10000, Scaling(kind), 64);
        var g = new Generator(3);
        var q = randn([1, 1, 1, 16], ScalarType.Float64, generator: g);
        var k = randn([1, 1, 1, 16], ScalarType.Float64, generator: g);
        foreach (var (m, n) in new[] { (5L, 2L), (9L, 9L), (3L, 11L) })
        {
            double reference = (Rotate(rope, q, m) * Rotate(rope, k, n)).sum().item<double>();
            foreach (var shift in new[] { 1L, 7L, 40L })
            {
                double shifted = (Rotate(rope, q, m + shift) * Rotate(rope, k, n + shift)).sum().item<double>();
                Assert.True(Math.Abs(reference - shifted) <= 1e-4 * Math.Max(1, Math.Abs(reference)),
                    $"{kind}: q·k at ({m},{n}) = {reference}, shifted by {shift} = {shifted}");
            }
        }
        // And the product does change with the relative distance.
        double near = (Rotate(rope, q, 4) * Rotate(rope, k, 3)).sum().item<double>();
        double far = (Rotate(rope, q, 30) * Rotate(rope, k, 3)).sum().item<double>();
        Assert.NotEqual(near, far, 6);
    }

    [Fact]
    public void LinearScalingInterpolatesPositions()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var plain = new RotaryEmbedding(16, 10000, null, 64);
        using var linear = new RotaryEmbedding(16, 10000, new RopeScaling { RopeType = "linear", Factor = 4 }, 64);
        var (c1, s1) = plain.Compute(tensor(new long[] { 1, 2, 3 }).unsqueeze(0), ScalarType.Float32);
        var (c4, s4) = linear.Compute(tensor(new long[] { 4, 8, 12 }).unsqueeze(0), ScalarType.Float32);
        TensorAssert.Close(c1, c4, 1e-5, "cos");
        TensorAssert.Close(s1, s4, 1e-5, "sin");
    }

    [Fact]
    public void DynamicScalingChangesTheBaseOnlyBeyondTheTrainedLength()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        const int dim = 16, max = 32;
        const double theta = 10000, factor = 2;
        using var plain = new RotaryEmbedding(dim, theta, null, max);
        using var dynamic = new RotaryEmbedding(dim, theta, new RopeScaling { RopeType = "dynamic", Factor = factor }, max);
        var within = arange(0, max, dtype: ScalarType.Int64).unsqueeze(0);
        TensorAssert.Close(plain.Compute(within, ScalarType.Float64).Cos, dynamic.Compute(within, ScalarType.Float64).Cos, 0, "cos within the trained length");

        var beyond = arange(0, 50, dtype: ScalarType.Int64).unsqueeze(0);
        double scaledBase = theta * Math.Pow(factor * 50 / max - (factor - 1), dim / (dim - 2.0));
        using var expected = new RotaryEmbedding(dim, scaledBase, null, max);
        TensorAssert.Close(expected.Compute(beyond, ScalarType.Float64).Cos, dynamic.Compute(beyond, ScalarType.Float64).Cos, 1e-5, "cos beyond the trained length");
    }

    [Fact]
    public void Llama3ScalingKeepsHighFrequenciesAndDividesLowOnes()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var scaling = new RopeScaling { RopeType = "llama3", Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 8192 };
        var (scaled, attention) = RotaryEmbedding.ComputeInverseFrequencies(128, 500000, scaling, 131072);
        var plain = Reference.DefaultInvFreq(128, 500000);
        Assert.Equal(1.0, attention);
        for (int i = 0; i < plain.Length; i++)
        {
            double wavelen = 2 * Math.PI / plain[i];
            if (wavelen < 8192 / 4.0) Assert.Equal(plain[i], scaled[i], 12);
            else if (wavelen > 8192 / 1.0) Assert.Equal(plain[i] / 8, scaled[i], 12);
            else Assert.InRange(scaled[i], plain[i] / 8, plain[i]);
        }
    }

    [Fact]
    public void YarnBlendsFrequenciesAndScalesAttention()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var scaling = new RopeScaling { RopeType = "yarn", Factor = 4, OriginalMaxPositionEmbeddings = 4096 };
        var (scaled, attention) = RotaryEmbedding.ComputeInverseFrequencies(64, 10000, scaling, 16384);
        Assert.Equal(0.1 * Math.Log(4) + 1, attention, 12);
        var plain = Reference.DefaultInvFreq(64, 10000);
        Assert.Equal(plain[0], scaled[0], 12);              // fastest rotations extrapolate
        Assert.Equal(plain[^1] / 4, scaled[^1], 12);        // slowest interpolate
        for (int i = 0; i < plain.Length; i++) Assert.InRange(scaled[i], plain[i] / 4 - 1e-15, plain[i] + 1e-15);
    }

    [Fact]
    public void UnknownScalingIsRejectedWithTheSupportedList()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var e = Assert.Throws<NotSupportedException>(() => new RotaryEmbedding(16, 10000, new RopeScaling { RopeType = "longrope", Factor = 2 }, 64));
        Assert.Contains("longrope", e.Message);
        Assert.Contains("llama3", e.Message);
        Assert.Throws<InvalidDataException>(() => new RotaryEmbedding(16, 10000, new RopeScaling { RopeType = "linear" }, 64));
    }
}
