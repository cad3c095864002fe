using System.Collections.Concurrent;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Runtime;

/// <summary>
/// Native Scalars that stay referenced while libtorch reads them. TorchSharp turns C# numbers into Scalars implicitly
/// (<c>x * 0.5</c>, <c>pow(2)</c>, and the alpha of 1 inside <c>a + b</c>) and never disposes them, so the finalizer
/// frees each one at some point, possibly during the native call that reads it; dispose scopes do not manage Scalars.
/// Library code therefore makes Scalars only here (a test reads the IL to hold it to that): constants of the code or of
/// a configuration through <see cref="Of(double)"/> (made once, alive for the process), values that change per call
/// through <see cref="Owned(double)"/> with <c>using</c>, and tensor arithmetic through the helpers below.
/// </summary>
public static class Scalars
{
    private static readonly ConcurrentDictionary<double, Scalar> Floats = new();
    private static readonly ConcurrentDictionary<long, Scalar> Integers = new();

    /// <summary>The integer 1 (the alpha of an addition).</summary>
    public static Scalar One { get; } = Of(1L);

    /// <summary>A floating-point Scalar for a value fixed by code or configuration (cached: never disposed).</summary>
    public static Scalar Of(double value) => Floats.GetOrAdd(value, v => v.ToScalar());

    /// <summary>An integer Scalar for a value fixed by code or configuration (cached: never disposed).</summary>
    public static Scalar Of(long value) => Integers.GetOrAdd(value, v => v.ToScalar());

    /// <summary>A Scalar for a value that changes from call to call (a learning rate); dispose it (<c>using</c>) after the call that reads it.</summary>
    public static Scalar Owned(double value) => value.ToScalar();

    /// <summary>a + b (TorchSharp's <c>+</c> makes a Scalar alpha of 1 for every addition).</summary>
    public static Tensor Plus(this Tensor a, Tensor b) => a.add(b, One);

    /// <summary>a + value (a constant).</summary>
    public static Tensor Plus(this Tensor a, double value) => a.add(Of(value), One);

    /// <summary>a + value for integer tensors (positions, ids).</summary>
    public static Tensor Plus(this Tensor a, long value) => a.add(Of(value), One);

    /// <summary>a · value (a constant).</summary>
    public static Tensor Times(this Tensor a, double value) => a.mul(Of(value));

    /// <summary>a / value (a constant).</summary>
    public static Tensor Over(this Tensor a, double value) => a.div(Of(value));

    /// <summary>a ** exponent (a constant).</summary>
    public static Tensor Power(this Tensor a, double exponent) => a.pow(Of(exponent));

    /// <summary>arange(start, stop) as int64 on <paramref name="device"/> (TorchSharp's short overloads make Scalars for the defaults).</summary>
    public static Tensor Range(long start, long stop, Device? device = null) => arange(Of(start), Of(stop), One, ScalarType.Int64, device);
}
