using MLNetPeft.Runtime;
using static TorchSharp.torch;

namespace MLNetPeft.Architectures.Layers;

/// <summary>
/// Dropout that draws from a generator owned by the running training step when one is set (<see cref="Begin"/>),
/// and from libtorch's process-wide generator otherwise. The process-wide one is shared by every thread: two models
/// training at once would take numbers from each other's stream, and a seed would no longer fix the result.
/// </summary>
public static class StepDropout
{
    [ThreadStatic] private static Generator? t_generator;

    /// <summary>True while a <see cref="Begin"/> scope is open on this thread.</summary>
    public static bool IsActive => t_generator is not null;

    /// <summary>
    /// Until the returned scope is disposed, dropout on this thread draws from a generator seeded with
    /// <paramref name="seed"/> on <paramref name="device"/>, so a training step's masks depend on the seed alone.
    /// </summary>
    public static IDisposable Begin(long seed, Device device)
    {
        var previous = t_generator;
        t_generator = new Generator(unchecked((ulong)seed), device);
        return new Scope(previous);
    }

    /// <summary>Zeroes each element with probability <paramref name="p"/> and scales the rest by 1/(1−p) while training.</summary>
    public static Tensor Apply(Tensor input, double p, bool training)
    {
        if (!training || p <= 0) return input;
        if (t_generator is not { } generator) return nn.functional.dropout(input, p, true);
        if (p >= 1) return zeros_like(input);
        using var keep = rand(input.shape, input.dtype, input.device, generator: generator).ge_(Scalars.Of(p));
        return (input * keep).Over(1 - p);
    }

    private sealed class Scope(Generator? previous) : IDisposable
    {
        private bool _disposed;

        public void Dispose()
        {
            if (_disposed) return;
            _disposed = true;
            t_generator?.Dispose();
            t_generator = previous;
        }
    }
}
