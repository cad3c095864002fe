using MLNetPeft.Architectures.Layers;
using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

public class StepDropoutTests
{
    private static Tensor Drop(long seed, Tensor input, double p)
    {
        using (StepDropout.Begin(seed, CPU)) return StepDropout.Apply(input, p, training: true);
    }

    [Fact]
    public void TheSameSeedDropsTheSameElementsAndKeptOnesAreRescaled()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var input = ones(200, 50);
        using var first = Drop(7, input, 0.3);
        using var again = Drop(7, input, 0.3);
        using var other = Drop(8, input, 0.3);
        TensorAssert.BitIdentical(first, again, "dropout with the same seed");
        Assert.True(first.ne(other).any().item<bool>(), "another seed must drop other elements");
        double dropped = first.eq(0).to(ScalarType.Float64).mean().item<double>();
        Assert.InRange(dropped, 0.27, 0.33);
        Assert.True(first.ne(0).logical_not().logical_or(first.isclose(full_like(first, 1 / 0.7))).all().item<bool>(), "kept elements are scaled by 1/(1-p)");
        Assert.Same(input, StepDropout.Apply(input, 0.3, training: false));
    }

    [Fact]
    public void OtherThreadsDrawingFromTheGlobalGeneratorDoNotChangeTheMasks()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var input = ones(64, 64);
        using var alone = Drop(3, input, 0.5);
        using var neighbour = RandomDrawingThread.Start();
        for (int i = 0; i < 20; i++)
        {
            using (StepDropout.Begin(3, CPU))
            {
                using var _ = rand(10); // even this thread's own global draws do not move the step's stream
                using var masked = StepDropout.Apply(input, 0.5, training: true);
                TensorAssert.BitIdentical(alone, masked, "dropout while another thread draws random numbers");
            }
        }
        Assert.True(neighbour.Stop() > 0);
        Assert.False(StepDropout.IsActive);
    }
}
