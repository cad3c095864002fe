using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

/// <summary>
/// Independent forward passes written from the papers' formulas, for checking the library's modules:
/// attention is an explicit softmax(q·k/√d)·v loop over positions in double precision, RoPE rotates each
/// (i, i + d/2) pair by position·θ^(−2i/d), and norms and activations are spelled out. Weights are read
/// by their HF names from the model's state dict.
/// </summary>
public static class Reference
{
    /// <summary>Explicit attention: q [T, H·d], k and v [T, Hkv·d] as double[T, width]; visible(i, j) says whether query i sees key j.</summary>
    public static double[,] Attention(double[,] q, double[,] k, double[,] v, int heads, int kvHeads, Func<int, int, bool> visible, double scale)
    {
        int t = q.GetLength(0), d = q.GetLength(1) / heads;
        var output = new double[t, heads * d];
        for (int h = 0; h < heads; h++)
        {
            int kvh = h / (heads / kvHeads);
            for (int i = 0; i < t; i++)
            {
                var scores = new double[t];
                double max = double.NegativeInfinity;
                for (int j = 0; j < t; j++)
                {
                    if (!visible(i, j)) { scores[j] = double.NegativeInfinity; continue; }
                    double s = 0;
                    for (int c = 0; c < d; c++) s += q[i, h * d + c] * k[j, kvh * d + c];
                    scores[j] = s * scale;
                    max = Math.Max(max, scores[j]);
                }
                double sum = 0;
                for (int j = 0; j < t; j++) { scores[j] = double.IsNegativeInfinity(scores[j]) ? 0 : Math.Exp(scores[j] - max); sum += scores[j]; }
                for (int j = 0; j < t; j++)
                {
                    if (scores[j] == 0) continue;
                    for (int c = 0; c < d; c++) output[i, h * d + c] += scores[j] / sum * v[j, kvh * d + c];
                }
            }
        }
        return output;
    }

    /// <summary>Rotates each head's (c, c + d/2) pairs of row i by angle position[i]·invFreq[c].</summary>
    public static double[,] Rope(double[,] x, int heads, long[] positions, double[] invFreq, double attentionFactor = 1.0)
    {
        int t = x.GetLength(0), d = x.GetLength(1) / heads, half = d / 2;
        var y = new double[t, x.GetLength(1)];
        for (int i = 0; i < t; i++)
        for (int h = 0; h < heads; h++)
        for (int c = 0; c < half; c++)
        {
            double angle = positions[i] * invFreq[c];
            double cos = Math.Cos(angle) * attentionFactor, sin = Math.Sin(angle) * attentionFactor;
            double a = x[i, h * d + c], b = x[i, h * d + c + half];
            y[i, h * d + c] = a * cos - b * sin;
            y[i, h * d + c + half] = b * cos + a * sin;
        }
        return y;
    }

    public static double[] DefaultInvFreq(int d, double theta) => Enumerable.Range(0, d / 2).Select(i => Math.Pow(theta, -2.0 * i / d)).ToArray();

    public static Tensor Dbl(Tensor t) => t.detach().to(ScalarType.Float64);

    public static double[,] ToMatrix(Tensor t)
    {
        var m = t.detach().to(ScalarType.Float64).contiguous();
        var data = m.data<double>().ToArray();
        int rows = (int)m.shape[0], cols = (int)m.shape[1];
        var result = new double[rows, cols];
        Buffer.BlockCopy(data, 0, result, 0, data.Length * sizeof(double));
        return result;
    }

    public static Tensor FromMatrix(double[,] m)
    {
        var data = new double[m.Length];
        Buffer.BlockCopy(m, 0, data, 0, data.Length * sizeof(double));
        return tensor(data, [m.GetLength(0), m.GetLength(1)], ScalarType.Float64);
    }

    public static Tensor LayerNorm(Tensor x, Tensor w, Tensor b, double eps)
    {
        var mean = x.mean([-1L], keepdim: true);
        var variance = (x - mean).pow(2).mean([-1L], keepdim: true);
        return (x - mean) / (variance + eps).sqrt() * Dbl(w) + Dbl(b);
    }

    public static Tensor RmsNorm(Tensor x, Tensor w, double eps) => x / (x.pow(2).mean([-1L], keepdim: true) + eps).sqrt() * Dbl(w);

    public static Tensor GeluTanh(Tensor x) => 0.5 * x * (1 + (Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x.pow(3))).tanh());
    public static Tensor GeluErf(Tensor x) => 0.5 * x * (1 + (x / Math.Sqrt(2)).erf());
    public static Tensor Silu(Tensor x) => x / (1 + (-x).exp());

    /// <summary>x·Wᵀ + b for an nn.Linear weight [out, in].</summary>
    public static Tensor Linear(Tensor x, Dictionary<string, Tensor> w, string name) =>
        w.TryGetValue(name + ".bias", out var b) ? x.matmul(Dbl(w[name + ".weight"]).t()) + Dbl(b) : x.matmul(Dbl(w[name + ".weight"]).t());

    /// <summary>GPT-2 logits [T, vocab] for one sequence of ids.</summary>
    public static Tensor Gpt2(Dictionary<string, Tensor> w, MLNetPeft.Architectures.Gpt2Config c, long[] ids)
    {
        var idx = tensor(ids);
        var h = Dbl(w["transformer.wte.weight"]).index_select(0, idx) + Dbl(w["transformer.wpe.weight"]).narrow(0, 0, ids.Length);
        for (int l = 0; l < c.NLayer; l++)
        {
            string p = $"transformer.h.{l}.";
            var a = LayerNorm(h, w[p + "ln_1.weight"], w[p + "ln_1.bias"], c.LayerNormEpsilon);
            var qkv = a.matmul(Dbl(w[p + "attn.c_attn.weight"])) + Dbl(w[p + "attn.c_attn.bias"]);
            var parts = qkv.chunk(3, -1);
            var att = Attention(ToMatrix(parts[0]), ToMatrix(parts[1]), ToMatrix(parts[2]), c.NHead, c.NHead, (i, j) => j <= i, 1 / Math.Sqrt(c.NEmbd / c.NHead));
            h = h + FromMatrix(att).matmul(Dbl(w[p + "attn.c_proj.weight"])) + Dbl(w[p + "attn.c_proj.bias"]);
            var m = LayerNorm(h, w[p + "ln_2.weight"], w[p + "ln_2.bias"], c.LayerNormEpsilon);
            var f = GeluTanh(m.matmul(Dbl(w[p + "mlp.c_fc.weight"])) + Dbl(w[p + "mlp.c_fc.bias"]));
            h = h + f.matmul(Dbl(w[p + "mlp.c_proj.weight"])) + Dbl(w[p + "mlp.c_proj.bias"]);
        }
        h = LayerNorm(h, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], c.LayerNormEpsilon);
        return h.matmul(Dbl(w["transformer.wte.weight"]).t());
    }

    /// <summary>Llama/Qwen2 logits [T, vocab] for one sequence; <paramref name="visible"/> defaults to causal.</summary>
    public static Tensor Llama(Dictionary<string, Tensor> w, MLNetPeft.Architectures.LlamaConfig c, long[] ids, double[] invFreq,
        double attentionFactor = 1.0, Func<int, int, bool>? visible = null)
    {
        visible ??= (i, j) => j <= i;
        var positions = Enumerable.Range(0, ids.Length).Select(i => (long)i).ToArray();
        var h = Dbl(w["model.embed_tokens.weight"]).index_select(0, tensor(ids));
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string p = $"model.layers.{l}.";
            var a = RmsNorm(h, w[p + "input_layernorm.weight"], c.RmsNormEps);
            var q = Rope(ToMatrix(Linear(a, w, p + "self_attn.q_proj")), c.NumAttentionHeads, positions, invFreq, attentionFactor);
            var k = Rope(ToMatrix(Linear(a, w, p + "self_attn.k_proj")), c.KeyValueHeads, positions, invFreq, attentionFactor);
            var v = ToMatrix(Linear(a, w, p + "self_attn.v_proj"));
            var att = Attention(q, k, v, c.NumAttentionHeads, c.KeyValueHeads, visible, 1 / Math.Sqrt(c.HeadDim));
            h = h + Linear(FromMatrix(att), w, p + "self_attn.o_proj");
            var m = RmsNorm(h, w[p + "post_attention_layernorm.weight"], c.RmsNormEps);
            h = h + Linear(Silu(Linear(m, w, p + "mlp.gate_proj")) * Linear(m, w, p + "mlp.up_proj"), w, p + "mlp.down_proj");
        }
        h = RmsNorm(h, w["model.norm.weight"], c.RmsNormEps);
        return h.matmul(Dbl(w.TryGetValue("lm_head.weight", out var head) ? head : w["model.embed_tokens.weight"]).t());
    }

    /// <summary>BERT last hidden states [T, hidden] and pooled output for one sequence with a 0/1 padding mask.</summary>
    public static (Tensor Hidden, Tensor Pooled) Bert(Dictionary<string, Tensor> w, MLNetPeft.Architectures.BertConfig c, long[] ids, long[] mask, long[] tokenTypes)
    {
        var h = Dbl(w["embeddings.word_embeddings.weight"]).index_select(0, tensor(ids))
            + Dbl(w["embeddings.position_embeddings.weight"]).narrow(0, 0, ids.Length)
            + Dbl(w["embeddings.token_type_embeddings.weight"]).index_select(0, tensor(tokenTypes));
        h = LayerNorm(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], c.LayerNormEps);
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string p = $"encoder.layer.{l}.";
            var q = ToMatrix(Linear(h, w, p + "attention.self.query"));
            var k = ToMatrix(Linear(h, w, p + "attention.self.key"));
            var v = ToMatrix(Linear(h, w, p + "attention.self.value"));
            var att = Attention(q, k, v, c.NumAttentionHeads, c.NumAttentionHeads, (_, j) => mask[j] == 1, 1 / Math.Sqrt(c.HiddenSize / c.NumAttentionHeads));
            h = LayerNorm(Linear(FromMatrix(att), w, p + "attention.output.dense") + h, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], c.LayerNormEps);
            var f = Linear(GeluErf(Linear(h, w, p + "intermediate.dense")), w, p + "output.dense");
            h = LayerNorm(f + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], c.LayerNormEps);
        }
        var pooled = Linear(h.narrow(0, 0, 1), w, "pooler.dense").tanh().squeeze(0);
        return (h, pooled);
    }
}
