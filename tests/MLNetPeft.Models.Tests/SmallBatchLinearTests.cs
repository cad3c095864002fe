using MLNetPeft.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

public class SmallBatchLinearTests
{
    [Theory]
    [InlineData(1, 256, 640, true)]
    [InlineData(3, 7, 5, false)]
    [InlineData(4, 100, 33, true)]
    [InlineData(2, 17, 1, false)]
    [InlineData(4, 600, 700, true)]
    public void MatchesLibtorchsLinear(int rows, int inFeatures, int outFeatures, bool bias)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        manual_seed(rows * 1000 + inFeatures);
        var layer = nn.Linear(inFeatures, outFeatures, hasBias: bias);
        var x = randn(1, rows, inFeatures);
        Assert.True(SmallBatchLinear.Qualifies(x, layer.weight!, layer.bias));
        var expected = layer.call(x);
        var actual = SmallBatchLinear.Call(layer, x);
        Assert.Equal(expected.shape, actual.shape);
        // Float32 sums of up to 640 products in another order: a few units in the last place of the largest value.
        TensorAssert.Close(expected, actual, 1e-5 * Math.Max(1.0, expected.abs().max().item<float>()));
    }

    [Fact]
    public void ARowGetsTheSameBitsWhateverElseIsInItsBatch()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        manual_seed(3);
        var layer = nn.Linear(75, 40);
        var x = randn(SmallBatchLinear.MaxRows, 75);
        var together = SmallBatchLinear.Call(layer, x);
        for (int r = 0; r < SmallBatchLinear.MaxRows; r++)
            TensorAssert.BitIdentical(SmallBatchLinear.Call(layer, x.narrow(0, r, 1).contiguous()), together.narrow(0, r, 1), $"row {r}");
    }

    [Fact]
    public void AViewWithAStorageOffsetIsReadFromItsOwnStart()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        manual_seed(4);
        var layer = nn.Linear(32, 8);
        var rows = randn(6, 32);
        var view = rows.narrow(0, 2, 3);   // contiguous, starts 64 floats into the storage
        Assert.True(view.is_contiguous());
        TensorAssert.Close(layer.call(view), SmallBatchLinear.Call(layer, view), 1e-5);
    }

    [Fact]
    public void ALayerWithAHookGoesThroughItsCall()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var layer = nn.Linear(8, 4);
        Assert.True(SmallBatchLinear.HasNoHooks(layer));   // TorchSharp's hook fields are found, so the fast path is reachable
        var x = randn(1, 8);
        layer.register_forward_hook((_, _, output) => output.add(100.0));
        Assert.False(SmallBatchLinear.HasNoHooks(layer));
        var expected = nn.functional.linear(x, layer.weight!, layer.bias).add(100.0);
        TensorAssert.Close(expected, SmallBatchLinear.Call(layer, x), 1e-5);
    }

    [Fact]
    public void AutogradManyRowsAndOtherDtypesStayWithLibtorch()
    {
        using var scope = NewDisposeScope();
        var layer = nn.Linear(8, 4);
        var x = randn(2, 8);
        Assert.False(SmallBatchLinear.Qualifies(x, layer.weight!, layer.bias));        // the weight wants a gradient
        var y = SmallBatchLinear.Call(layer, x);
        Assert.True(y.requires_grad);
        using (no_grad())
        {
            Assert.True(SmallBatchLinear.Qualifies(x, layer.weight!, layer.bias));
            Assert.False(SmallBatchLinear.Qualifies(randn(SmallBatchLinear.MaxRows + 1, 8), layer.weight!, layer.bias));
            Assert.False(SmallBatchLinear.Qualifies(randn(2, 8).to(ScalarType.Float64), layer.weight!.to(ScalarType.Float64), null));
            Assert.False(SmallBatchLinear.Qualifies(randn(8, 2).t(), layer.weight!, layer.bias));   // not contiguous
            Assert.False(SmallBatchLinear.Qualifies(randn(2, 7), layer.weight!, layer.bias));       // wrong width: libtorch's error
        }
    }
}
