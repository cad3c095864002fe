using MLNetPeft.Runtime;
using System.Text.Json.Serialization;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Architectures.Layers;

/// <summary>The <c>rope_scaling</c> object of an HF config (field names as HF writes them).</summary>
public sealed class RopeScaling
{
    [JsonPropertyName("rope_type")] public string? RopeType { get; set; }
    /// <summary>The older spelling of <see cref="RopeType"/>.</summary>
    [JsonPropertyName("type")] public string? Type { get; set; }
    [JsonPropertyName("factor")] public double? Factor { get; set; }
    [JsonPropertyName("original_max_position_embeddings")] public int? OriginalMaxPositionEmbeddings { get; set; }
    [JsonPropertyName("low_freq_factor")] public double? LowFreqFactor { get; set; }
    [JsonPropertyName("high_freq_factor")] public double? HighFreqFactor { get; set; }
    [JsonPropertyName("beta_fast")] public double? BetaFast { get; set; }
    [JsonPropertyName("beta_slow")] public double? BetaSlow { get; set; }
    [JsonPropertyName("attention_factor")] public double? AttentionFactor { get; set; }
    [JsonPropertyName("mscale")] public double? Mscale { get; set; }
    [JsonPropertyName("mscale_all_dim")] public double? MscaleAllDim { get; set; }
    [JsonPropertyName("truncate")] public bool? Truncate { get; set; }

    [JsonIgnore] public string Kind => RopeType ?? Type ?? "default";

    public static readonly IReadOnlyList<string> SupportedKinds = ["default", "linear", "dynamic", "llama3", "yarn"];
}

/// <summary>
/// Rotary position embedding (Su et al. 2021) in HF's "rotate half" layout, with the frequency scalings
/// of HF's <c>modeling_rope_utils</c>: linear (position interpolation), dynamic NTK, Llama 3 and YaRN.
/// </summary>
public sealed class RotaryEmbedding : nn.Module
{
    /// <inheritdoc cref="PretrainedModule.RegisterComponents"/>
    protected override void RegisterComponents() { }

    private readonly int _dim;
    private readonly double _theta;
    private readonly RopeScaling? _scaling;
    private readonly int _maxPositions;
    private readonly double _attentionFactor;
    private readonly Tensor _invFreq;

    public RotaryEmbedding(int headDim, double theta, RopeScaling? scaling, int maxPositionEmbeddings) : base(nameof(RotaryEmbedding))
    {
        if (headDim % 2 != 0) throw new InvalidDataException($"Rotary embeddings need an even head dimension, got {headDim}.");
        _dim = headDim;
        _theta = theta;
        _scaling = scaling;
        _maxPositions = maxPositionEmbeddings;
        (var invFreq, _attentionFactor) = ComputeInverseFrequencies(headDim, theta, scaling, maxPositionEmbeddings);
        // Not a buffer: it is derived from the config (HF does not save it either), and it must stay float32
        // when the model is cast to bf16, so it follows the positions' device instead of the module's dtype.
        _invFreq = tensor(invFreq.Select(f => (float)f).ToArray()).DetachFromDisposeScope();
    }

    /// <summary>The multiplier YaRN applies to cos and sin (1 for other kinds).</summary>
    public double AttentionFactor => _attentionFactor;

    /// <summary>cos and sin of shape [batch, seq, headDim] for integer <paramref name="positionIds"/> [batch, seq].</summary>
    public (Tensor Cos, Tensor Sin) Compute(Tensor positionIds, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var invFreq = _invFreq;
        if (_scaling?.Kind == "dynamic")
        {
            long seqLen = positionIds.max().item<long>() + 1;
            if (seqLen > _maxPositions) invFreq = DynamicInverseFrequencies(seqLen);
        }
        invFreq = invFreq.to(positionIds.device);
        // [B, T, D/2] = positions ⊗ inverse frequencies, in float32 as HF computes it.
        var freqs = positionIds.to(ScalarType.Float32).unsqueeze(-1) * invFreq;
        var emb = cat([freqs, freqs], -1);
        var cos = emb.cos();
        var sin = emb.sin();
        if (_attentionFactor != 1.0) { cos = cos.Times(_attentionFactor); sin = sin.Times(_attentionFactor); }
        return (cos.to(dtype).MoveToOuterDisposeScope(), sin.to(dtype).MoveToOuterDisposeScope());
    }

    /// <summary>Rotates <paramref name="x"/> [batch, heads, seq, headDim] by the angles given by cos/sin [batch, seq, headDim].</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        var (c, signedSin) = ForHeads(cos, sin);
        return Rotate(x, c, signedSin).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// cos and sin [batch, seq, headDim] laid out once per forward pass for every layer's rotation of its heads
    /// (<see cref="Apply(Tensor, ValueTuple{Tensor, Tensor})"/>): [batch, 1, seq, headDim], and sin with its first half negated, so that HF's
    /// x·cos + rotate_half(x)·sin = x·cos + roll(x, headDim/2)·signedSin (the same products, bit for bit) costs four ops, not nine.
    /// </summary>
    public static (Tensor Cos, Tensor SignedSin) ForHeads(Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        long half = sin.shape[^1] / 2;
        var s = sin.unsqueeze(1);
        var signedSin = cat([-s.narrow(-1, 0, half), s.narrow(-1, half, half)], -1);
        return (cos.unsqueeze(1).MoveToOuterDisposeScope(), signedSin.MoveToOuterDisposeScope());
    }

    /// <summary>Rotates heads <paramref name="x"/> [batch, heads, seq, headDim] by angles laid out by <see cref="ForHeads"/>.</summary>
    public static Tensor Apply(Tensor x, (Tensor Cos, Tensor SignedSin) angles)
    {
        using var scope = NewDisposeScope();
        return Rotate(x, angles.Cos, angles.SignedSin).MoveToOuterDisposeScope();
    }

    private static Tensor Rotate(Tensor x, Tensor cos, Tensor signedSin) =>
        (x * cos).Plus(x.roll(x.shape[^1] / 2, -1) * signedSin);

    private Tensor DynamicInverseFrequencies(long seqLen)
    {
        double factor = _scaling!.Factor ?? 1.0;
        double scaledBase = _theta * Math.Pow(factor * seqLen / _maxPositions - (factor - 1), _dim / (_dim - 2.0));
        return tensor(DefaultInverseFrequencies(_dim, scaledBase).Select(f => (float)f).ToArray());
    }

    private static double[] DefaultInverseFrequencies(int dim, double theta) =>
        Enumerable.Range(0, dim / 2).Select(i => 1.0 / Math.Pow(theta, 2.0 * i / dim)).ToArray();

    /// <summary>Inverse frequencies and attention factor for a config, following HF's definitions of each kind.</summary>
    public static (double[] InvFreq, double AttentionFactor) ComputeInverseFrequencies(int dim, double theta, RopeScaling? scaling, int maxPositions)
    {
        var inv = DefaultInverseFrequencies(dim, theta);
        var kind = scaling?.Kind ?? "default";
        switch (kind)
        {
            case "default":
            case "dynamic": // scaled at run time, once the sequence outgrows max_position_embeddings
                return (inv, 1.0);
            case "linear":
                return (inv.Select(f => f / RequireFactor(scaling!)).ToArray(), 1.0);
            case "llama3":
                return (Llama3(inv, scaling!), 1.0);
            case "yarn":
                return Yarn(dim, theta, scaling!, maxPositions);
            default:
                throw new NotSupportedException($"rope_scaling type '{kind}' is not supported; use one of {string.Join(", ", RopeScaling.SupportedKinds)}.");
        }
    }

    private static double RequireFactor(RopeScaling s) =>
        s.Factor is > 0 and var f ? f : throw new InvalidDataException($"rope_scaling of type '{s.Kind}' needs a positive 'factor'.");

    private static double[] Llama3(double[] inv, RopeScaling s)
    {
        double factor = RequireFactor(s);
        double low = s.LowFreqFactor ?? throw new InvalidDataException("rope_scaling 'llama3' needs 'low_freq_factor'.");
        double high = s.HighFreqFactor ?? throw new InvalidDataException("rope_scaling 'llama3' needs 'high_freq_factor'.");
        double oldContext = s.OriginalMaxPositionEmbeddings ?? throw new InvalidDataException("rope_scaling 'llama3' needs 'original_max_position_embeddings'.");
        double lowFreqWavelen = oldContext / low, highFreqWavelen = oldContext / high;
        return inv.Select(f =>
        {
            double wavelen = 2 * Math.PI / f;
            if (wavelen < highFreqWavelen) return f;               // high frequencies: unchanged
            if (wavelen > lowFreqWavelen) return f / factor;        // low frequencies: interpolated
            double smooth = (oldContext / wavelen - low) / (high - low);
            return (1 - smooth) * f / factor + smooth * f;          // in between: blended
        }).ToArray();
    }

    private static (double[], double) Yarn(int dim, double theta, RopeScaling s, int maxPositions)
    {
        double factor = RequireFactor(s);
        int original = s.OriginalMaxPositionEmbeddings ?? maxPositions;
        static double GetMscale(double scale, double m = 1) => scale <= 1 ? 1.0 : 0.1 * m * Math.Log(scale) + 1.0;
        double attentionFactor = s.AttentionFactor
            ?? (s.Mscale is { } m && s.MscaleAllDim is { } mAll && m != 0 && mAll != 0
                ? GetMscale(factor, m) / GetMscale(factor, mAll)
                : GetMscale(factor));
        double betaFast = s.BetaFast ?? 32, betaSlow = s.BetaSlow ?? 1;
        double CorrectionDim(double rotations) => dim * Math.Log(original / (rotations * 2 * Math.PI)) / (2 * Math.Log(theta));
        double lowDim = CorrectionDim(betaFast), highDim = CorrectionDim(betaSlow);
        if (s.Truncate ?? true) { lowDim = Math.Floor(lowDim); highDim = Math.Ceiling(highDim); }
        lowDim = Math.Max(lowDim, 0);
        highDim = Math.Min(highDim, dim - 1);
        if (lowDim == highDim) highDim += 0.001;
        var inv = new double[dim / 2];
        for (int i = 0; i < inv.Length; i++)
        {
            // HF builds pos_freqs in float32; the formula is the same.
            double posFreq = Math.Pow(theta, 2.0 * i / dim);
            double extrapolation = 1.0 / posFreq, interpolation = 1.0 / (factor * posFreq);
            double ramp = Math.Clamp((i - lowDim) / (highDim - lowDim), 0, 1);
            double extrapolationWeight = 1 - ramp;
            inv[i] = interpolation * (1 - extrapolationWeight) + extrapolation * extrapolationWeight;
        }
        return (inv, attentionFactor);
    }
}
