using MLNetPeft.Runtime;
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

    /// <summary>Block size of the second quantisation (of the absmax constants).</summary>
    public const int DoubleQuantBlockSize = 256;

    /// <summary>
    /// bitsandbytes' signed 8-bit dynamic map (<c>create_dynamic_map</c>): for exponents 10⁻⁶…10⁰, 2ⁱ fraction
    /// values between 0.1 and 1 (midpoints), both signs, plus 0 and 1; 256 values, sorted. Double quantisation stores
    /// the absmax constants with it.
    /// </summary>
    public static float[] DynamicMap()
    {
        var data = new List<float>();
        const int maxExponentBits = 7;
        for (int i = 0; i < maxExponentBits; i++)
        {
            int fractionItems = (1 << i) + 1;
            var boundaries = Enumerable.Range(0, fractionItems).Select(k => (float)(0.1 + 0.9 * k / (fractionItems - 1))).ToArray();
            float scale = (float)Math.Pow(10, -(maxExponentBits - 1) + i);
            for (int k = 0; k + 1 < fractionItems; k++)
            {
                float mean = (boundaries[k] + boundaries[k + 1]) / 2f;
                data.Add(scale * mean);
                data.Add(-scale * mean);
            }
        }
        data.Add(0f);
        data.Add(1f);
        data.Sort();
        return [.. data];
    }

    /// <summary>
    /// Quantises <paramref name="weight"/> (any shape, any float dtype) blockwise to NF4. With
    /// <paramref name="doubleQuant"/> (QLoRA's double quantisation) the float32 absmax of each block is itself stored
    /// in 8 bits: their mean is subtracted and the rest quantised with <see cref="DynamicMap"/> in blocks of 256.
    /// </summary>
    public static Nf4Tensor Quantize(Tensor weight, int blockSize = DefaultBlockSize, bool doubleQuant = true)
    {
        var (packed, absmax) = QuantizeBlockwise(weight, blockSize, Code, pack: true);
        if (!doubleQuant) return new Nf4Tensor(packed, absmax, null, weight.shape, blockSize);
        float offset = (float)absmax.Average(a => (double)a);
        var (codes, scales) = QuantizeBlockwise(tensor(absmax.Select(a => a - offset).ToArray()), DoubleQuantBlockSize, DynamicMap(), pack: false);
        // The last block of 256 is padded; only one code per absmax is kept.
        return new Nf4Tensor(packed, codes[..absmax.Length], new Nf4Tensor.NestedScales(scales, offset), weight.shape, blockSize);
    }

    /// <summary>
    /// Blockwise absmax quantisation to the nearest of <paramref name="code"/> (values in [−1, 1]): one index per
    /// element (two per byte when <paramref name="pack"/>) and one float32 absmax per block.
    /// </summary>
    private static (byte[] Indices, float[] Absmax) QuantizeBlockwise(Tensor weight, int blockSize, float[] code, bool pack)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (blockSize <= 0 || blockSize % 2 != 0) throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "must be a positive even number");
        if (weight.numel() == 0) throw new ArgumentException("Cannot quantise an empty tensor.", nameof(weight));
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var flat = weight.detach().to(ScalarType.Float32).cpu().flatten();
        long n = flat.numel();
        long blocks = (n + blockSize - 1) / blockSize;
        var padded = nn.functional.pad(flat, [0, blocks * blockSize - n]).view(blocks, blockSize);
        var absmax = padded.abs().amax([1]);
        // All-zero blocks keep scale 0 and quantise to the zero code.
        var normalized = padded / absmax.clamp_min(Scalars.Of((double)float.Epsilon)).unsqueeze(1);
        var codeTensor = tensor(code);
        // Nearest code value (bitsandbytes compares against the midpoints, which picks the same one).
        var indices = new long[blocks * blockSize];
        const int chunk = 1 << 16;
        var normalizedFlat = normalized.flatten();
        for (long start = 0; start < indices.Length; start += chunk)
        {
            long length = Math.Min(chunk, indices.Length - start);
            var part = (normalizedFlat.narrow(0, start, length).unsqueeze(1) - codeTensor).abs().argmin(1);
            part.data<long>().CopyTo(indices, (int)start);
        }
        byte[] result;
        if (pack)
        {
            result = new byte[indices.Length / 2];
            for (int i = 0; i < result.Length; i++) result[i] = (byte)((indices[2 * i] << 4) | indices[2 * i + 1]);
        }
        else
        {
            result = indices.Select(i => (byte)i).ToArray();
        }
        return (result, absmax.data<float>().ToArray());
    }
}

/// <summary>
/// An NF4-quantised tensor: packed 4-bit codes, the block scales (float32, or 8-bit codes with nested float32 scales
/// and an offset after double quantisation) and the original shape. The codes and scales are held as (uint8/float32)
/// tensors, so that dequantising on every forward call allocates no managed memory.
/// </summary>
public sealed class Nf4Tensor
{
    /// <summary>Double quantisation's second level: one float32 scale per 256 absmax codes, and the subtracted mean.</summary>
    public sealed record NestedScales(float[] Absmax, float Offset);

    private readonly Tensor _packed, _code;
    private readonly Tensor? _absmax, _absmaxCodes, _nestedAbsmax, _dynamicMap;

    public Nf4Tensor(byte[] packed, byte[] absmaxCodes, NestedScales nested, long[] shape, int blockSize)
        : this(packed, null, absmaxCodes, nested, shape, blockSize) { }

    public Nf4Tensor(byte[] packed, float[] absmax, NestedScales? nested, long[] shape, int blockSize)
        : this(packed, absmax, null, nested, shape, blockSize) { }

    private Nf4Tensor(Nf4Tensor source, Device device)
    {
        Nested = source.Nested;
        Shape = source.Shape;
        BlockSize = source.BlockSize;
        _packed = source._packed.to(device).DetachFromDisposeScope();
        _code = source._code.to(device).DetachFromDisposeScope();
        _absmax = source._absmax?.to(device).DetachFromDisposeScope();
        _absmaxCodes = source._absmaxCodes?.to(device).DetachFromDisposeScope();
        _nestedAbsmax = source._nestedAbsmax?.to(device).DetachFromDisposeScope();
        _dynamicMap = source._dynamicMap?.to(device).DetachFromDisposeScope();
    }

    /// <summary>The same quantised tensor with its codes and scales on <paramref name="device"/> (this one when already there).</summary>
    public Nf4Tensor To(Device device) => _packed.device == device ? this : new Nf4Tensor(this, device);

    private Nf4Tensor(byte[] packed, float[]? absmax, byte[]? absmaxCodes, NestedScales? nested, long[] shape, int blockSize)
    {
        Nested = nested;
        Shape = shape;
        BlockSize = blockSize;
        long blocks = (Count + blockSize - 1) / blockSize;
        if (packed.Length * 2L != blocks * blockSize || (absmax?.Length ?? absmaxCodes!.Length) != blocks)
            throw new InvalidDataException($"An NF4 tensor of shape [{string.Join(", ", shape)}] with blocks of {blockSize} needs {blocks * blockSize / 2} code bytes and {blocks} scales.");
        // Copies (clone) so that the tensors own their memory, independent of the arrays.
        _packed = tensor(packed).clone().DetachFromDisposeScope();
        _code = tensor(Nf4.Code).clone().DetachFromDisposeScope();
        if (absmax is not null)
        {
            _absmax = tensor(absmax).clone().DetachFromDisposeScope();
        }
        else
        {
            _absmaxCodes = tensor(absmaxCodes!).clone().DetachFromDisposeScope();
            _nestedAbsmax = tensor(nested!.Absmax).clone().DetachFromDisposeScope();
            _dynamicMap = tensor(Nf4.DynamicMap()).DetachFromDisposeScope();
        }
    }

    /// <summary>The codes, two per byte (first in the high nibble).</summary>
    public byte[] Packed => _packed.cpu().data<byte>().ToArray();
    /// <summary>The float32 absmax per block (null after double quantisation).</summary>
    public float[]? Absmax => _absmax?.cpu().data<float>().ToArray();
    /// <summary>The absmax per block as 8-bit dynamic-map codes (double quantisation only).</summary>
    public byte[]? AbsmaxCodes => _absmaxCodes?.cpu().data<byte>().ToArray();
    public NestedScales? Nested { get; }
    public long[] Shape { get; }
    public int BlockSize { get; }
    public long Count => Shape.Aggregate(1L, (a, b) => a * b);
    private long Blocks => (Count + BlockSize - 1) / BlockSize;

    /// <summary>Storage per original element, in bits: 4 for the code plus the share of the block scales.</summary>
    public double BitsPerParameter => 8.0 * (_packed.numel() + (_absmax is not null ? 4.0 * Blocks
        : Blocks + 4.0 * Nested!.Absmax.Length + 4)) / Count;

    /// <summary>The absmax of each block, undoing the double quantisation if there was one.</summary>
    public float[] BlockScales()
    {
        using var scope = NewDisposeScope();
        return ScalesTensor().cpu().data<float>().ToArray();
    }

    private Tensor ScalesTensor() => _absmax ?? (_dynamicMap!.index_select(0, _absmaxCodes!.to(ScalarType.Int64))
        * _nestedAbsmax!.repeat_interleave(Nf4.DoubleQuantBlockSize).narrow(0, 0, Blocks)).Plus((double)Nested!.Offset);

    /// <summary>The float tensor the codes stand for (code value × block absmax), in <paramref name="dtype"/>.</summary>
    public Tensor Dequantize(ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        using var scope = NewDisposeScope();
        var high = _packed.div(Scalars.Of(16L), rounding_mode: RoundingMode.floor);
        var low = _packed.remainder(Scalars.Of(16L));
        var codes = stack([high, low], 1).flatten().to(ScalarType.Int64);
        var values = _code.index_select(0, codes).view(Blocks, BlockSize) * ScalesTensor().unsqueeze(1);
        return values.flatten().narrow(0, 0, Count).view(Shape).to(dtype, device ?? _packed.device).MoveToOuterDisposeScope();
    }
}
