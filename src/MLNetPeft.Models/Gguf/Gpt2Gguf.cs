using MLNetPeft.Architectures;

namespace MLNetPeft.Gguf;

/// <summary>
/// GPT-2 in GGUF as llama.cpp's converter writes it (architecture "gpt2"): HF's Conv1D weights ([in, out]) transposed to
/// linear layout, the fused q/k/v kept as <c>attn_qkv</c>, learned positions as <c>position_embd</c>, and the tied head
/// written out as <c>output.weight</c>.
/// </summary>
public static class Gpt2Gguf
{
    public const string Architecture = "gpt2";

    /// <summary>(HF name, llama.cpp name, whether the tensor is a Conv1D weight to transpose), in file order.</summary>
    public static IEnumerable<(string Hf, string Gguf, bool Transpose)> Weights(Gpt2Config config)
    {
        yield return ("transformer.wte.weight", "token_embd.weight", false);
        yield return ("transformer.wpe.weight", "position_embd.weight", false);
        for (int i = 0; i < config.NLayer; i++)
        {
            string h = $"transformer.h.{i}.", b = $"blk.{i}.";
            foreach (var (hf, gguf, conv) in new[]
            {
                ("ln_1", "attn_norm", false), ("attn.c_attn", "attn_qkv", true), ("attn.c_proj", "attn_output", true),
                ("ln_2", "ffn_norm", false), ("mlp.c_fc", "ffn_up", true), ("mlp.c_proj", "ffn_down", true),
            })
            {
                yield return (h + hf + ".weight", b + gguf + ".weight", conv);
                yield return (h + hf + ".bias", b + gguf + ".bias", false);
            }
        }
        yield return ("transformer.ln_f.weight", "output_norm.weight", false);
        yield return ("transformer.ln_f.bias", "output_norm.bias", false);
        yield return ("transformer.wte.weight", TiedOutput, false);   // the head is tied to the embedding
    }

    /// <summary>The config a gpt2 GGUF file's hyperparameters describe (vocabulary size from its token list), as HF's GPT2LMHeadModel.</summary>
    public static Gpt2Config ReadConfig(GgufFile file)
    {
        int U(string key) => file.RequireInt32($"{Architecture}.{key}");
        var config = new Gpt2Config
        {
            NPositions = U("context_length"),
            NEmbd = U("embedding_length"),
            NLayer = U("block_count"),
            NHead = U("attention.head_count"),
            LayerNormEpsilon = file.RequireNumber($"{Architecture}.attention.layer_norm_epsilon"),
            ActivationFunction = "gelu_new",   // the only GELU llama.cpp's gpt2 graph computes
            Architectures = ["GPT2LMHeadModel"],
            TorchDtype = "float32",
        };
        int feedForward = U("feed_forward_length");
        config.NInner = feedForward == 4 * config.NEmbd ? null : feedForward;
        return config;
    }

    /// <summary>llama.cpp's tensor name → (HF name, whether to transpose back to Conv1D), the tied <c>output.weight</c> left out.</summary>
    public static Dictionary<string, (string Hf, bool Transpose)> HfNames(Gpt2Config config) =>
        Weights(config).Where(w => w.Gguf != TiedOutput).ToDictionary(w => w.Gguf, w => (w.Hf, w.Transpose), StringComparer.Ordinal);

    /// <summary>llama.cpp's name for an HF weight of GPT-2, or null when it has none.</summary>
    public static string? GgufName(Gpt2Config config, string hfName) =>
        Weights(config).Where(w => w.Hf == hfName && w.Gguf != TiedOutput).Select(w => w.Gguf).FirstOrDefault();

    /// <summary>The head llama.cpp's converter writes out although HF ties it to <c>token_embd</c>.</summary>
    public const string TiedOutput = "output.weight";

    /// <exception cref="NotSupportedException">A variant llama.cpp's gpt2 graph does not compute (another activation, per-layer attention scaling).</exception>
    public static void AddHyperparameters(GgufWriter writer, Gpt2Config config)
    {
        if (config.ActivationFunction is not ("gelu_new" or "gelu_pytorch_tanh" or "gelu_fast"))
            throw new NotSupportedException($"GPT-2 with activation_function '{config.ActivationFunction}' has no llama.cpp equivalent; its gpt2 graph uses the tanh GELU (gelu_new).");
        if (config.ScaleAttnByInverseLayerIdx || !config.ScaleAttnWeights)
            throw new NotSupportedException("GPT-2 with scale_attn_by_inverse_layer_idx or without scale_attn_weights has no llama.cpp equivalent.");
        const string a = Architecture;
        writer.Add($"{a}.vocab_size", GgufValue.Of((uint)config.VocabSize))
            .Add($"{a}.context_length", GgufValue.Of((uint)config.NPositions))
            .Add($"{a}.embedding_length", GgufValue.Of((uint)config.NEmbd))
            .Add($"{a}.feed_forward_length", GgufValue.Of((uint)(config.NInner ?? 4 * config.NEmbd)))
            .Add($"{a}.block_count", GgufValue.Of((uint)config.NLayer))
            .Add($"{a}.attention.head_count", GgufValue.Of((uint)config.NHead))
            .Add($"{a}.attention.layer_norm_epsilon", GgufValue.Of((float)config.LayerNormEpsilon));
    }
}
