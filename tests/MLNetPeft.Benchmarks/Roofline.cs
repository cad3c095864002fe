using System.Diagnostics;
using static TorchSharp.torch;

namespace MLNetPeft.Benchmarks;

/// <summary>
/// The fp32 matmul rate an MFU figure is measured against: the best rate over the GEMM shapes the models themselves run
/// (for each linear layer [in → out] and N tokens: the forward [N, in]·[in, out], and the backward [N, out]·[out, in]
/// and [out, N]·[N, in]) and over square products, each timed in several interleaved rounds so that machine noise
/// lowers no shape alone. A model's matmuls cannot beat the best of these; if one seems to, the benchmark is wrong.
/// </summary>
public sealed record Roofline(double Peak, string BestShape, double Square1024, int Shapes)
{
    public static IEnumerable<(long M, long K, long N)> GemmShapes(long tokens, IEnumerable<(long In, long Out)> layers) =>
        layers.SelectMany(l => new[] { (tokens, l.In, l.Out), (tokens, l.Out, l.In), (l.Out, tokens, l.In) });

    public static Roofline Measure(IEnumerable<(long M, long K, long N)> shapes, int rounds)
    {
        var all = shapes.Concat(new (long M, long K, long N)[] { (1024, 1024, 1024), (2048, 2048, 2048) }).Distinct().ToList();
        var operands = all.Select(s => (Shape: s, A: randn(s.M, s.K), B: randn(s.K, s.N))).ToList();
        var best = new double[all.Count];
        foreach (var (_, a, b) in operands) matmul(a, b).Dispose();   // warm-up
        for (int r = 0; r < rounds; r++)
        {
            for (int i = 0; i < operands.Count; i++)
            {
                var (s, a, b) = operands[i];
                int repeats = Math.Max(1, (int)(2e9 / (2.0 * s.M * s.K * s.N)));   // about 2 GFLOP per timing
                var sw = Stopwatch.StartNew();
                for (int k = 0; k < repeats; k++) matmul(a, b).Dispose();
                best[i] = Math.Max(best[i], 2.0 * s.M * s.K * s.N * repeats / sw.Elapsed.TotalSeconds);
            }
        }
        foreach (var (_, a, b) in operands) { a.Dispose(); b.Dispose(); }
        int top = Array.IndexOf(best, best.Max());
        var shape = all[top];
        return new Roofline(best[top], $"[{shape.M}×{shape.K}]·[{shape.K}×{shape.N}]", best[all.IndexOf((1024, 1024, 1024))], all.Count);
    }
}
