using static TorchSharp.torch;

namespace MLNetPeft.Tuners.QLora;

/// <summary>
/// 4-bit NormalFloat (NF4, Dettmers et al. 2023, QLoRA): 16 code values at quantiles of N(0, 1) scaled to [−1, 1],
/// with an exact zero; weights are quantised blockwise, each block scaled by its absolute maximum. Two codes share a
/// byte, the first element in the high nibble (bitsandbytes' layout).
/// </summary>
public static class Nf4
{
    /// <summary>bitsandbytes' NF4 table (<c>get_4bit_type("nf4")</c>), as float32.</summary>
    public static readonly float[] Code =
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f, -0.18477343022823334f,
        -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
    ];

    /// <summary>QLoRA's block size for the weights.</summary>
    public const int DefaultBlockSize = 64;

    /// <summary>
    /// The NF4 table derived from its definition: 8 positive values at the N(0, 1) quantiles of
    /// linspace(δ, 0.5, 9) without its last point, 7 negative ones at those of linspace(δ, 0.5, 8), zero, all divided
    /// by the largest, with δ = 1 − ½(1/32 + 1/30) ≈ 0.9677083 (bitsandbytes' offset).
    /// </summary>
    public static double[] DeriveCode()
    {
        const double offset = 0.9677083;
        var positive = Linspace(offset, 0.5, 9).SkipLast(1).Select(InverseNormal);
        var negative = Linspace(offset, 0.5, 8).SkipLast(1).Select(p => -InverseNormal(p));
        var values = positive.Concat(negative).Append(0.0).Order().ToArray();
        double max = values.Max();
        return values.Select(v => v / max).ToArray();
    }

    private static IEnumerable<double> Linspace(double from, double to, int count) =>
        Enumerable.Range(0, count).Select(i => from + (to - from) * i / (count - 1));

    /// <summary>Φ⁻¹(p) by Acklam's rational approximation (relative error below 1.2e-9).</summary>
    internal static double InverseNormal(double p)
    {
        double[] a = [-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00];
        double[] b = [-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01, -1.328068155288572e+01];
        double[] c = [-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00];
        double[] d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00];
        if (p is <= 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(p), p, "must be in (0, 1)");
        if (p < 0.02425)
        {
            double q = Math.Sqrt(-2 * Math.Log(p));
            return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
        }
        if (p > 1 - 0.02425) return -InverseNormal(1 - p);
        double r = p - 0.5, s = r * r;
        return (((((a[0] * s + a[1]) * s + a[2]) * s + a[3]) * s + a[4]) * s + a[5]) * r / (((((b[0] * s + b[1]) * s + b[2]) * s + b[3]) * s + b[4]) * s + 1);
    }

    /// <summary>Quantises <paramref name="weight"/> (any shape, any float dtype) blockwise to NF4.</summary>
    public static Nf4Tensor Quantize(Tensor weight, int blockSize = DefaultBlockSize)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (blockSize <= 0 || blockSize % 2 != 0) throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "must be a positive even number");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var flat = weight.detach().to(ScalarType.Float32).cpu().flatten();
        long n = flat.numel();
        long blocks = (n + blockSize - 1) / blockSize;
        var padded = nn.functional.pad(flat, [0, blocks * blockSize - n]).view(blocks, blockSize);
        var absmax = padded.abs().amax([1]);
        // All-zero blocks keep scale 0 and quantise to the zero code.
        var normalized = padded / absmax.clamp_min(float.Epsilon).unsqueeze(1);
        var code = tensor(Code);
        // Nearest code value (bitsandbytes compares against the midpoints, which picks the same one).
        var indices = new long[blocks * blockSize];
        const int chunk = 1 << 16;
        var normalizedFlat = normalized.flatten();
        for (long start = 0; start < indices.Length; start += chunk)
        {
            long length = Math.Min(chunk, indices.Length - start);
            var part = (normalizedFlat.narrow(0, start, length).unsqueeze(1) - code).abs().argmin(1);
            part.data<long>().CopyTo(indices, (int)start);
        }
        var packed = new byte[indices.Length / 2];
        for (int i = 0; i < packed.Length; i++) packed[i] = (byte)((indices[2 * i] << 4) | indices[2 * i + 1]);
        return new Nf4Tensor(packed, absmax.data<float>().ToArray(), weight.shape, blockSize);
    }
}

/// <summary>An NF4-quantised tensor: packed 4-bit codes, one float32 absmax per block, and the original shape.</summary>
public sealed class Nf4Tensor(byte[] packed, float[] absmax, long[] shape, int blockSize)
{
    public byte[] Packed { get; } = packed;
    public float[] Absmax { get; } = absmax;
    public long[] Shape { get; } = shape;
    public int BlockSize { get; } = blockSize;
    public long Count => Shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>Storage per original element, in bits: 4 for the code plus the block's float32 scale.</summary>
    public double BitsPerParameter => 8.0 * (Packed.Length + 4.0 * Absmax.Length) / Count;

    /// <summary>The float tensor the codes stand for (code value × block absmax), in <paramref name="dtype"/>.</summary>
    public Tensor Dequantize(ScalarType dtype = ScalarType.Float32)
    {
        using var scope = NewDisposeScope();
        var codes = new long[Packed.Length * 2];
        for (int i = 0; i < Packed.Length; i++)
        {
            codes[2 * i] = Packed[i] >> 4;
            codes[2 * i + 1] = Packed[i] & 0xF;
        }
        var values = tensor(Nf4.Code).index_select(0, tensor(codes)).view(Absmax.Length, BlockSize) * tensor(Absmax).unsqueeze(1);
        return values.flatten().narrow(0, 0, Count).view(Shape).to(dtype).MoveToOuterDisposeScope();
    }
}
