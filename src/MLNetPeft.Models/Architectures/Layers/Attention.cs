using MLNetPeft.Runtime;
using static TorchSharp.torch;

namespace MLNetPeft.Architectures.Layers;

/// <summary>
/// Which key positions each query may see: an additive float mask (0 = visible, dtype minimum = hidden),
/// or the flag that plain causal masking applies and the fused kernel can build it itself.
/// </summary>
public sealed class AttentionMask : IDisposable
{
    private AttentionMask(Tensor? additive, bool isCausal) { Additive = additive; IsCausal = isCausal; }

    /// <summary>[batch, 1, queryLength, keyLength] additive mask, or null.</summary>
    public Tensor? Additive { get; }
    /// <summary>True when the only rule is "no looking ahead" with queries and keys aligned from position 0.</summary>
    public bool IsCausal { get; }

    public static readonly AttentionMask None = new(null, false);

    /// <summary>
    /// Builds the mask of a decoder step: <paramref name="queryLength"/> new positions after <paramref name="pastLength"/>
    /// cached ones. <paramref name="paddingMask"/> [batch, past + new] has 1 for real tokens and 0 for padding.
    /// <paramref name="slidingWindow"/> limits how far back a query may look (Mistral).
    /// </summary>
    public static AttentionMask Causal(long queryLength, long pastLength, Tensor? paddingMask, int? slidingWindow, ScalarType dtype, Device device)
    {
        long keyLength = pastLength + queryLength;
        bool windowMatters = slidingWindow is { } w && keyLength > w;
        if (paddingMask is null && !windowMatters)
        {
            if (pastLength == 0) return queryLength == 1 ? None : new AttentionMask(null, true);
            if (queryLength == 1) return None; // one new token sees every cached one
        }
        using var scope = NewDisposeScope();
        var queryPositions = Scalars.Range(pastLength, keyLength, device).unsqueeze(1);
        var keyPositions = Scalars.Range(0, keyLength, device).unsqueeze(0);
        var visible = keyPositions <= queryPositions;                          // [q, k]
        if (windowMatters) visible = visible & (queryPositions - keyPositions).lt(Scalars.Of((long)slidingWindow!.Value));
        var allowed = visible.unsqueeze(0).unsqueeze(0);                     // [1, 1, q, k]
        if (paddingMask is not null)
        {
            CheckPaddingMask(paddingMask, keyLength);
            allowed = allowed & paddingMask.to(ScalarType.Bool).to(device).unsqueeze(1).unsqueeze(1); // [b, 1, q, k]
        }
        return new AttentionMask(ToAdditive(allowed, dtype).MoveToOuterDisposeScope(), false);
    }

    /// <summary>Bidirectional attention that only hides padding keys (encoders). Null mask means no padding.</summary>
    public static AttentionMask Padding(Tensor? paddingMask, ScalarType dtype, Device device)
    {
        if (paddingMask is null) return None;
        using var scope = NewDisposeScope();
        var allowed = paddingMask.to(ScalarType.Bool).to(device).unsqueeze(1).unsqueeze(1); // [b, 1, 1, k]
        return new AttentionMask(ToAdditive(allowed, dtype).MoveToOuterDisposeScope(), false);
    }

    private static void CheckPaddingMask(Tensor mask, long keyLength)
    {
        if (mask.dim() != 2 || mask.shape[1] != keyLength)
            throw new ArgumentException($"The attention mask must be [batch, {keyLength}] (cached plus new positions), got [{string.Join(", ", mask.shape)}].");
    }

    // The dtype minimum rather than -inf keeps rows with no visible key (left padding) finite instead of NaN.
    private static Tensor ToAdditive(Tensor allowed, ScalarType dtype) =>
        zeros(allowed.shape, dtype, allowed.device).masked_fill(allowed.logical_not(), Scalars.Of(MinValue(dtype)));

    private static double MinValue(ScalarType dtype) => dtype switch
    {
        ScalarType.Float16 => -65504.0,
        ScalarType.BFloat16 => -3.3895313892515355e38,
        ScalarType.Float64 => double.MinValue,
        _ => float.MinValue,
    };

    public void Dispose() => Additive?.Dispose();
}

/// <summary>Scaled dot-product attention with grouped-query heads, shared by every architecture.</summary>
public static class Attention
{
    /// <summary>
    /// softmax(Q·Kᵀ·scale + mask)·V for Q [batch, heads, q, d] and K, V [batch, kvHeads, k, d]; each group of
    /// heads / kvHeads query heads shares one key/value head (GQA; kvHeads = heads is ordinary multi-head).
    /// </summary>
    public static Tensor ScaledDotProduct(Tensor query, Tensor key, Tensor value, AttentionMask mask, double? scale = null, double dropout = 0.0)
    {
        using var scope = NewDisposeScope();
        long heads = query.shape[1], kvHeads = key.shape[1];
        if (heads % kvHeads != 0)
            throw new ArgumentException($"{heads} query heads cannot share {kvHeads} key/value heads evenly.");
        // The fused kernel always scales by 1/sqrt(d); another scale is folded into the queries.
        double defaultScale = 1.0 / Math.Sqrt(query.shape[^1]);
        if (scale is { } s && s != defaultScale) query = query.Times(s / defaultScale);
        long queryLength = query.shape[2];
        bool explicitDropout = dropout > 0 && StepDropout.IsActive;
        if (heads != kvHeads && queryLength == 1 && !mask.IsCausal && !explicitDropout && (mask.Additive is null || mask.Additive.shape[1] == 1))
        {
            // One new token (decoding): each group of query heads becomes a group of queries of its key/value head, so the
            // cache is not copied heads / kvHeads times per layer and step. The mask [b, 1, 1, k] broadcasts the same.
            long batch = query.shape[0], d = query.shape[^1];
            var grouped = query.reshape(batch, kvHeads, heads / kvHeads, d);
            var attended = nn.functional.scaled_dot_product_attention(grouped, key, value, mask.Additive, dropout, false);
            return attended.reshape(batch, heads, 1, d).MoveToOuterDisposeScope();
        }
        if (heads != kvHeads)
        {
            key = key.repeat_interleave(heads / kvHeads, dim: 1);
            value = value.repeat_interleave(heads / kvHeads, dim: 1);
        }
        // The fused kernel's dropout draws from libtorch's process-wide generator; a training step that owns a
        // generator (StepDropout.Begin) gets the same computation spelled out, with its dropout drawn from that one.
        var output = explicitDropout
            ? ExplicitAttention(query.Times(defaultScale), key, value, mask, dropout)
            : nn.functional.scaled_dot_product_attention(query, key, value, mask.Additive, dropout, mask.IsCausal);
        return output.MoveToOuterDisposeScope();
    }

    private static Tensor ExplicitAttention(Tensor scaledQuery, Tensor key, Tensor value, AttentionMask mask, double dropout)
    {
        var scores = scaledQuery.matmul(key.transpose(-2, -1));
        if (mask.Additive is { } additive) scores = scores.Plus(additive);
        if (mask.IsCausal)
        {
            long q = scores.shape[^2], k = scores.shape[^1];
            var hidden = ones(q, k, ScalarType.Bool, scores.device).triu(k - q + 1);
            scores = scores.masked_fill(hidden, Scalars.Of(double.NegativeInfinity));
        }
        return StepDropout.Apply(scores.softmax(-1), dropout, true).matmul(value);
    }

    /// <summary>[batch, seq, heads·d] → [batch, heads, seq, d]; for one position (decoding) a single view of the same memory.</summary>
    public static Tensor SplitHeads(Tensor x, long heads) =>
        x.shape[1] == 1 && x.is_contiguous()
            ? x.view(x.shape[0], heads, 1, -1)
            : x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2);

    /// <summary>[batch, heads, seq, d] → [batch, seq, heads·d]; for one position (decoding) a single reshape.</summary>
    public static Tensor MergeHeads(Tensor x) =>
        x.shape[2] == 1
            ? x.reshape(x.shape[0], 1, -1)
            : x.transpose(1, 2).contiguous().view(x.shape[0], x.shape[2], -1);

    /// <summary>Positions 0..n-1 after the cached ones, or, with left padding, counted over real tokens only (HF's rule).</summary>
    public static Tensor PositionIds(long batch, long queryLength, long pastLength, Tensor? paddingMask, Device device)
    {
        if (paddingMask is null)
            return Scalars.Range(pastLength, pastLength + queryLength, device).unsqueeze(0).expand(batch, queryLength);
        using var scope = NewDisposeScope();
        var mask = paddingMask.to(ScalarType.Int64).to(device);
        var positions = mask.cumsum(1).Plus(-1L).masked_fill(mask.eq(Scalars.Of(0L)), Scalars.One);
        return positions[.., (int)pastLength..].MoveToOuterDisposeScope();
    }
}
