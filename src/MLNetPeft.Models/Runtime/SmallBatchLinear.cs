using System.Numerics;
using System.Reflection;
using System.Runtime.CompilerServices;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Runtime;

/// <summary>
/// y = x·Wᵀ + b for the few rows of a decoding step. Generating a token of a small model is little more than reading
/// every weight once, and libtorch's CPU GEMM reads a [out, in] weight against a one-row x at about a third of the
/// speed a plain dot-product loop reaches (the llama.cpp benchmark's profile). So for at most <see cref="MaxRows"/>
/// rows of float32 on the CPU, outside autograd, the product is computed here: each weight row is read once and
/// dotted with every input row, the output features split over libtorch's thread count. Everything else, and every
/// layer with a forward hook (LoRA, IA3, AdaLoRA, QLoRA and the bottleneck adapters attach as hooks), takes
/// <c>layer.call(x)</c> unchanged.
/// </summary>
public static class SmallBatchLinear
{
    /// <summary>
    /// The most input rows (batch × new positions) computed here. Up to four rows the weight is read once for all of
    /// them and this is about twice libtorch's speed; from eight rows on libtorch's GEMM is as fast or faster.
    /// </summary>
    public const int MaxRows = 4;

    // A weight under 1 MiB is read by one thread before a second one, woken next to libtorch's spinning OpenMP
    // workers on a small machine, would have started.
    private const long ParallelWork = 1 << 18;

    // TorchSharp keeps a module's hooks in private dictionaries; if a later version renames them, no layer is taken for
    // hook-free and every call goes to libtorch (correct, only slower).
    private static readonly FieldInfo[]? HookFields = FindHookFields();

    /// <summary>The layer applied to <paramref name="x"/>: computed here when it qualifies, by <c>layer.call</c> otherwise.</summary>
    public static Tensor Call(Linear layer, Tensor x)
    {
        var weight = layer.weight!;
        var bias = layer.bias;
        return Qualifies(x, weight, bias) && HasNoHooks(layer) ? Compute(x, weight, bias) : layer.call(x);
    }

    /// <summary>nn.functional.linear(x, weight, bias), computed here when it qualifies (tied output heads).</summary>
    public static Tensor Functional(Tensor x, Tensor weight, Tensor? bias = null) =>
        Qualifies(x, weight, bias) ? Compute(x, weight, bias) : nn.functional.linear(x, weight, bias);

    internal static bool Qualifies(Tensor x, Tensor weight, Tensor? bias)
    {
        if (!Vector.IsHardwareAccelerated) return false;
        if (x.dtype != ScalarType.Float32 || weight.dtype != ScalarType.Float32 || bias is { dtype: not ScalarType.Float32 }) return false;
        if (x.device_type != DeviceType.CPU || weight.device_type != DeviceType.CPU || bias is { device_type: not DeviceType.CPU }) return false;
        if (x.dim() < 1 || weight.dim() != 2 || x.shape[^1] != weight.shape[1] || bias is not null && (bias.dim() != 1 || bias.shape[0] != weight.shape[0])) return false;
        long inFeatures = weight.shape[1];
        if (inFeatures == 0 || x.numel() / inFeatures > MaxRows || x.numel() == 0) return false;
        if (is_grad_enabled() && (x.requires_grad || weight.requires_grad || bias is { requires_grad: true })) return false;
        return x.is_contiguous() && weight.is_contiguous() && (bias is null || bias.is_contiguous());
    }

    internal static bool HasNoHooks(Linear layer)
    {
        if (HookFields is null) return false;
        foreach (var field in HookFields)
            if (field.GetValue(layer) is System.Collections.ICollection { Count: > 0 }) return false;
        return true;
    }

    private static FieldInfo[]? FindHookFields()
    {
        var type = typeof(nn.Module<Tensor, Tensor>);
        var names = new[] { "pre_hooks", "post_hooks" };
        var fields = names.Select(n => type.GetField(n, BindingFlags.Instance | BindingFlags.NonPublic)).ToArray();
        return fields.All(f => f is not null && typeof(System.Collections.ICollection).IsAssignableFrom(f.FieldType)) ? fields.Select(f => f!).ToArray() : null;
    }

    private static unsafe Tensor Compute(Tensor x, Tensor weight, Tensor? bias)
    {
        long outFeatures = weight.shape[0], inFeatures = weight.shape[1];
        int rows = (int)(x.numel() / inFeatures);
        var shape = x.shape.ToArray();
        shape[^1] = outFeatures;
        var y = empty(shape, ScalarType.Float32);
        if (outFeatures == 0) return y;
        fixed (byte* xBytes = x.bytes, wBytes = weight.bytes, yBytes = y.bytes)
        fixed (byte* bBytes = bias is null ? default : bias.bytes)
        {
            var job = new Job((float*)xBytes, (float*)wBytes, bias is null ? null : (float*)bBytes, (float*)yBytes, rows, inFeatures, outFeatures);
            int threads = Math.Min(get_num_threads(), (int)Math.Min(outFeatures, int.MaxValue));
            if (threads <= 1 || rows * inFeatures * outFeatures < ParallelWork) job.Run(0, outFeatures);
            else
            {
                long chunk = (outFeatures + threads - 1) / threads;
                Parallel.For(0, threads, t => job.Run(t * chunk, Math.Min(outFeatures, (t + 1) * chunk)));
            }
        }
        return y;
    }

    /// <summary>The pointers of one product; a struct so the parallel lambda can carry them (pointers cannot be captured).</summary>
    private readonly unsafe struct Job(float* x, float* w, float* b, float* y, int rows, long inFeatures, long outFeatures)
    {
        private readonly nint _x = (nint)x, _w = (nint)w, _b = (nint)b, _y = (nint)y;

        // Optimised from the first call: tier-0 code of these loops is many times slower, and a server's first requests would pay it.
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Run(long from, long to)
        {
            float* xs = (float*)_x, ws = (float*)_w, bs = (float*)_b, ys = (float*)_y;
            for (long o = from; o < to; o++)
            {
                float* row = ws + o * inFeatures;
                float add = bs is null ? 0f : bs[o];
                int r = 0;
                for (; r + 4 <= rows; r += 4)
                {
                    Dot4(row, xs + r * inFeatures, inFeatures, out float d0, out float d1, out float d2, out float d3);
                    ys[r * outFeatures + o] = d0 + add;
                    ys[(r + 1) * outFeatures + o] = d1 + add;
                    ys[(r + 2) * outFeatures + o] = d2 + add;
                    ys[(r + 3) * outFeatures + o] = d3 + add;
                }
                for (; r < rows; r++) ys[r * outFeatures + o] = Dot(row, xs + r * inFeatures, inFeatures) + add;
            }
        }

        // Every row is summed in the same order whether it comes alone or with three others (two accumulators over
        // alternating vectors, then the scalar tail), so a prompt's tokens do not depend on what else is in its batch.
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static float Dot(float* w, float* x, long n)
        {
            int width = Vector<float>.Count;
            Vector<float> s0 = default, s1 = default;
            long i = 0;
            for (; i + 2 * width <= n; i += 2 * width)
            {
                s0 = Vector.FusedMultiplyAdd(Vector.Load(w + i), Vector.Load(x + i), s0);
                s1 = Vector.FusedMultiplyAdd(Vector.Load(w + i + width), Vector.Load(x + i + width), s1);
            }
            if (i + width <= n) { s0 = Vector.FusedMultiplyAdd(Vector.Load(w + i), Vector.Load(x + i), s0); i += width; }
            float sum = Vector.Sum(s0 + s1);
            for (; i < n; i++) sum += w[i] * x[i];
            return sum;
        }

        // Four rows against one weight row, each exactly as Dot sums it: the weight is loaded once per four products.
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private static void Dot4(float* w, float* x, long n, out float d0, out float d1, out float d2, out float d3)
        {
            int width = Vector<float>.Count;
            Vector<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
            float* x0 = x, x1 = x + n, x2 = x + 2 * n, x3 = x + 3 * n;
            long i = 0;
            for (; i + 2 * width <= n; i += 2 * width)
            {
                var wa = Vector.Load(w + i);
                var wb = Vector.Load(w + i + width);
                a0 = Vector.FusedMultiplyAdd(wa, Vector.Load(x0 + i), a0);
                a1 = Vector.FusedMultiplyAdd(wa, Vector.Load(x1 + i), a1);
                a2 = Vector.FusedMultiplyAdd(wa, Vector.Load(x2 + i), a2);
                a3 = Vector.FusedMultiplyAdd(wa, Vector.Load(x3 + i), a3);
                b0 = Vector.FusedMultiplyAdd(wb, Vector.Load(x0 + i + width), b0);
                b1 = Vector.FusedMultiplyAdd(wb, Vector.Load(x1 + i + width), b1);
                b2 = Vector.FusedMultiplyAdd(wb, Vector.Load(x2 + i + width), b2);
                b3 = Vector.FusedMultiplyAdd(wb, Vector.Load(x3 + i + width), b3);
            }
            if (i + width <= n)
            {
                var wa = Vector.Load(w + i);
                a0 = Vector.FusedMultiplyAdd(wa, Vector.Load(x0 + i), a0);
                a1 = Vector.FusedMultiplyAdd(wa, Vector.Load(x1 + i), a1);
                a2 = Vector.FusedMultiplyAdd(wa, Vector.Load(x2 + i), a2);
                a3 = Vector.FusedMultiplyAdd(wa, Vector.Load(x3 + i), a3);
                i += width;
            }
            d0 = Vector.Sum(a0 + b0); d1 = Vector.Sum(a1 + b1); d2 = Vector.Sum(a2 + b2); d3 = Vector.Sum(a3 + b3);
            for (; i < n; i++)
            {
                d0 += w[i] * x0[i]; d1 += w[i] * x1[i]; d2 += w[i] * x2[i]; d3 += w[i] * x3[i];
            }
        }
    }
}
