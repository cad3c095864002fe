using MLNetPeft.Architectures;
using static TorchSharp.torch;

namespace MLNetPeft.LlamaCpp.Tests;

/// <summary>The largest absolute and relative (to the largest logit) difference between two sets of logits.</summary>
internal readonly record struct LogitDifference(double MaxAbs, double Scale, double ArgmaxAgreement)
{
    public double Relative => MaxAbs / Scale;

    /// <summary>
    /// The relative difference allowed against llama.cpp on F32 files: 1e-4 (float32 sums in another order over a few
    /// thousand terms), and 2e-3 for GPT-2, whose MLP ggml's CPU GELU computes from a float16 table (GGML_GELU_FP16;
    /// LogitTests.GeluIsTheOnlyGpt2Difference shows the rest agrees to float32 precision).
    /// </summary>
    public static double F32Tolerance(string variant) => variant == "gpt2" ? 2e-3 : 1e-4;

    public static float[][] Ours(CausalLanguageModel model, IReadOnlyList<int> ids)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var logits = model.Forward(tensor(ids.Select(i => (long)i).ToArray()).unsqueeze(0))[0].contiguous();
        int vocab = (int)logits.shape[1];
        var flat = logits.data<float>().ToArray();
        return Enumerable.Range(0, ids.Count).Select(t => flat.AsSpan(t * vocab, vocab).ToArray()).ToArray();
    }

    public static LogitDifference Between(float[][] ours, float[][] theirs)
    {
        double maxAbs = 0, scale = 0;
        int agree = 0;
        for (int t = 0; t < ours.Length; t++)
        {
            if (ours[t].Length != theirs[t].Length) throw new InvalidOperationException($"vocabularies differ: {ours[t].Length} vs {theirs[t].Length}");
            for (int j = 0; j < ours[t].Length; j++)
            {
                maxAbs = Math.Max(maxAbs, Math.Abs(ours[t][j] - theirs[t][j]));
                scale = Math.Max(scale, Math.Abs(ours[t][j]));
            }
            if (LlamaCpp.ArgMax(ours[t]) == LlamaCpp.ArgMax(theirs[t])) agree++;
        }
        return new LogitDifference(maxAbs, scale, (double)agree / ours.Length);
    }

    public override string ToString() => $"max abs {MaxAbs:E2}, relative {Relative:E2}, argmax agreement {ArgmaxAgreement:P0}";
}
