using System.Text.RegularExpressions;
using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using static TorchSharp.torch;

namespace MLNetPeft.Gguf;

/// <summary>
/// The Llama family in GGUF as llama.cpp's <c>convert_hf_to_gguf.py</c> writes it: Llama, Mistral and SmolLM as
/// architecture "llama", Qwen2 as "qwen2"; HF's tensor names mapped to llama.cpp's (<c>blk.N.attn_q.weight</c> …);
/// the hyperparameters under <c>{arch}.*</c> keys.
/// </summary>
public static partial class LlamaGguf
{
    // HF module path inside a decoder layer → llama.cpp's name inside blk.N (the .weight / .bias suffix is kept).
    private static readonly (string Hf, string Gguf)[] LayerNames =
    [
        ("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"), ("post_attention_layernorm", "ffn_norm"),
        ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"),
    ];

    private static readonly (string Hf, string Gguf)[] TopNames =
        [("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("lm_head", "output")];

    /// <summary>The tensor llama.cpp reads Llama 3's per-frequency rope divisors from.</summary>
    public const string RopeFreqsTensor = "rope_freqs.weight";

    /// <summary>llama.cpp's architecture name of a config: "qwen2" for Qwen2, "llama" for Llama, Mistral and SmolLM.</summary>
    public static string Architecture(LlamaConfig config) => config is Qwen2Config ? "qwen2" : "llama";

    /// <summary>
    /// Whether q/k rows are permuted: llama.cpp's "llama" architecture rotates adjacent pairs of a head (GPT-J style) while
    /// HF rotates its two halves, so the converter reorders the rows of q_proj and k_proj; "qwen2" rotates halves as HF does.
    /// </summary>
    public static bool PermutesQueryKey(string architecture) => architecture == "llama";

    /// <summary>llama.cpp's name for an HF tensor name of the family, or null when it has none.</summary>
    public static string? GgufName(string hfName)
    {
        var (module, suffix) = SplitSuffix(hfName);
        if (suffix is null) return null;
        foreach (var (hf, gguf) in TopNames) if (module == hf) return $"{gguf}.{suffix}";
        var m = LayerPattern().Match(module);
        if (!m.Success) return null;
        foreach (var (hf, gguf) in LayerNames) if (m.Groups[2].Value == hf) return $"blk.{m.Groups[1].Value}.{gguf}.{suffix}";
        return null;
    }

    /// <summary>The HF tensor name of a llama.cpp tensor name, or null when it has none.</summary>
    public static string? HfName(string ggufName)
    {
        var (module, suffix) = SplitSuffix(ggufName);
        if (suffix is null) return null;
        foreach (var (hf, gguf) in TopNames) if (module == gguf) return $"{hf}.{suffix}";
        var m = BlockPattern().Match(module);
        if (!m.Success) return null;
        foreach (var (hf, gguf) in LayerNames) if (m.Groups[2].Value == gguf) return $"model.layers.{m.Groups[1].Value}.{hf}.{suffix}";
        return null;
    }

    /// <summary>The HF names of every weight a model of <paramref name="config"/> has, in the order GGUF files list them.</summary>
    public static IEnumerable<string> WeightNames(LlamaConfig config)
    {
        yield return "model.embed_tokens.weight";
        for (int i = 0; i < config.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            yield return p + "input_layernorm.weight";
            foreach (var proj in new[] { "q", "k", "v" })
            {
                yield return p + $"self_attn.{proj}_proj.weight";
                if (config.QkvBias) yield return p + $"self_attn.{proj}_proj.bias";
            }
            yield return p + "self_attn.o_proj.weight";
            if (config.OutputBias) yield return p + "self_attn.o_proj.bias";
            yield return p + "post_attention_layernorm.weight";
            foreach (var proj in new[] { "gate", "up", "down" })
            {
                yield return p + $"mlp.{proj}_proj.weight";
                if (config.MlpBias) yield return p + $"mlp.{proj}_proj.bias";
            }
        }
        yield return "model.norm.weight";
        if (!config.TieWordEmbeddings) yield return "lm_head.weight";
    }

    /// <summary>
    /// The number of heads whose rows a permutation of <paramref name="hfName"/> reorders (query heads for q_proj,
    /// key/value heads for k_proj), or null when the tensor is stored as it is.
    /// </summary>
    public static int? PermutedHeads(string hfName, LlamaConfig config, string architecture)
    {
        if (!PermutesQueryKey(architecture)) return null;
        if (hfName.EndsWith(".self_attn.q_proj.weight", StringComparison.Ordinal) || hfName.EndsWith(".self_attn.q_proj.bias", StringComparison.Ordinal)) return config.NumAttentionHeads;
        if (hfName.EndsWith(".self_attn.k_proj.weight", StringComparison.Ordinal) || hfName.EndsWith(".self_attn.k_proj.bias", StringComparison.Ordinal)) return config.KeyValueHeads;
        return null;
    }

    /// <summary>
    /// Reorders the rows of each head from HF's halves layout to llama.cpp's pairs (the converter's <c>permute</c>):
    /// rows [h, 2, d/2] are read as [h, d/2, 2].
    /// </summary>
    public static Tensor ToInterleavedRows(Tensor weight, int heads)
    {
        var shape = weight.shape;
        var split = new long[] { heads, 2, shape[0] / heads / 2 }.Concat(shape.Skip(1)).ToArray();
        using var scope = NewDisposeScope();
        return weight.reshape(split).transpose(1, 2).reshape(shape).contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>The inverse of <see cref="ToInterleavedRows"/>.</summary>
    public static Tensor FromInterleavedRows(Tensor weight, int heads)
    {
        var shape = weight.shape;
        var split = new long[] { heads, shape[0] / heads / 2, 2 }.Concat(shape.Skip(1)).ToArray();
        using var scope = NewDisposeScope();
        return weight.reshape(split).transpose(1, 2).reshape(shape).contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>Writes the hyperparameters of <paramref name="config"/> under llama.cpp's keys.</summary>
    /// <exception cref="NotSupportedException">A rope scaling llama.cpp does not implement (dynamic NTK).</exception>
    public static void AddHyperparameters(GgufWriter writer, LlamaConfig config, string architecture)
    {
        string a = architecture;
        writer.Add($"{a}.vocab_size", GgufValue.Of((uint)config.VocabSize))
            .Add($"{a}.context_length", GgufValue.Of((uint)config.MaxPositionEmbeddings))
            .Add($"{a}.embedding_length", GgufValue.Of((uint)config.HiddenSize))
            .Add($"{a}.block_count", GgufValue.Of((uint)config.NumHiddenLayers))
            .Add($"{a}.feed_forward_length", GgufValue.Of((uint)config.IntermediateSize))
            .Add($"{a}.attention.head_count", GgufValue.Of((uint)config.NumAttentionHeads))
            .Add($"{a}.attention.head_count_kv", GgufValue.Of((uint)config.KeyValueHeads))
            .Add($"{a}.rope.freq_base", GgufValue.Of((float)config.RopeTheta))
            .Add($"{a}.attention.layer_norm_rms_epsilon", GgufValue.Of((float)config.RmsNormEps))
            .Add($"{a}.rope.dimension_count", GgufValue.Of((uint)config.HeadDim));
        if (config.HeadDim != config.HiddenSize / config.NumAttentionHeads)
        {
            writer.Add($"{a}.attention.key_length", GgufValue.Of((uint)config.HeadDim));
            writer.Add($"{a}.attention.value_length", GgufValue.Of((uint)config.HeadDim));
        }
        switch (config.RopeScaling?.Kind ?? "default")
        {
            case "default":
            case "llama3":   // as per-frequency divisors in rope_freqs.weight (RopeFrequencyFactors)
                break;
            case "linear":
                writer.Add($"{a}.rope.scaling.type", GgufValue.Of("linear"));
                writer.Add($"{a}.rope.scaling.factor", GgufValue.Of((float)config.RopeScaling!.Factor!.Value));
                break;
            case "yarn":
                var s = config.RopeScaling!;
                if (s.AttentionFactor is not null || s.Mscale is not null || s.MscaleAllDim is not null || s.Truncate == false)
                    throw new NotSupportedException("rope_scaling 'yarn' with attention_factor, mscale, mscale_all_dim or truncate=false has no llama.cpp equivalent in GGUF.");
                writer.Add($"{a}.rope.scaling.type", GgufValue.Of("yarn"));
                writer.Add($"{a}.rope.scaling.factor", GgufValue.Of((float)s.Factor!.Value));
                writer.Add($"{a}.rope.scaling.original_context_length", GgufValue.Of((uint)(s.OriginalMaxPositionEmbeddings ?? config.MaxPositionEmbeddings)));
                if (s.BetaFast is { } fast) writer.Add($"{a}.rope.scaling.yarn_beta_fast", GgufValue.Of((float)fast));
                if (s.BetaSlow is { } slow) writer.Add($"{a}.rope.scaling.yarn_beta_slow", GgufValue.Of((float)slow));
                break;
            case var kind:
                throw new NotSupportedException($"rope_scaling '{kind}' has no llama.cpp equivalent; GGUF export supports default, linear, llama3 and yarn.");
        }
    }

    /// <summary>Llama 3's rope scaling as llama.cpp takes it: the divisor of each frequency (unscaled / scaled), or null for other kinds.</summary>
    public static float[]? RopeFrequencyFactors(LlamaConfig config)
    {
        if (config.RopeScaling?.Kind != "llama3") return null;
        return FrequencyDivisors(config.HeadDim, config.RopeTheta, config.RopeScaling, config.MaxPositionEmbeddings);
    }

    private static float[] FrequencyDivisors(int headDim, double theta, RopeScaling scaling, int maxPositions)
    {
        var (plain, _) = RotaryEmbedding.ComputeInverseFrequencies(headDim, theta, null, maxPositions);
        var (scaled, _) = RotaryEmbedding.ComputeInverseFrequencies(headDim, theta, scaling, maxPositions);
        return plain.Zip(scaled, (p, s) => (float)(p / s)).ToArray();
    }

    /// <summary>
    /// HF's llama3 rope_scaling recovered from the per-frequency divisors <see cref="RopeFrequencyFactors"/> writes (and
    /// llama.cpp's converter does), or null when every divisor is 1. The divisors depend on factor, low/high_freq_factor and
    /// original_max_position_embeddings only through the factor and the line s = (L / wavelength − low) / (high − low),
    /// so any parameters on that line are the same rotation: low_freq_factor = 1 (Llama 3's own) is chosen, and high = 4
    /// where fewer than two frequencies lie in the blended band to fix the line. The result is accepted only when it
    /// gives back every divisor.
    /// </summary>
    /// <exception cref="InvalidDataException">Divisors that are not finite, below 1, or that no llama3 scaling gives.</exception>
    public static RopeScaling? Llama3ScalingFromFactors(float[] divisors, LlamaConfig config, string source)
    {
        var (plain, _) = RotaryEmbedding.ComputeInverseFrequencies(config.HeadDim, config.RopeTheta, null, config.MaxPositionEmbeddings);
        if (divisors.Length != plain.Length)
            throw new InvalidDataException($"GGUF file '{source}': '{RopeFreqsTensor}' has {divisors.Length} divisors; expected {plain.Length}, one per rotary frequency.");
        if (divisors.Any(d => !float.IsFinite(d) || d < 1 - DivisorTolerance))
            throw new InvalidDataException($"GGUF file '{source}': '{RopeFreqsTensor}' holds a divisor that is not a finite number ≥ 1; Llama 3 scaling only lowers frequencies.");
        double factor = divisors.Max();
        if (factor <= 1 + DivisorTolerance) return null;

        // Per frequency: x = 1 / wavelength and the blend s (0 where divided by the factor, 1 where unchanged).
        var x = plain.Select(f => f / (2 * Math.PI)).ToArray();
        var blend = divisors.Select(d => (1 / (double)d - 1 / factor) / (1 - 1 / factor)).ToArray();
        var band = Enumerable.Range(0, x.Length).Where(i => blend[i] is > BlendTolerance and < 1 - BlendTolerance).ToArray();
        var candidates = new List<(double Low, double High, double Context)>();
        if (band.Length >= 2)
        {
            // Least squares s = a·x + b; with low = 1: high − low = −1/b and L = a·(high − low).
            double mx = band.Average(i => x[i]), ms = band.Average(i => blend[i]);
            double a = band.Sum(i => (x[i] - mx) * (blend[i] - ms)) / band.Sum(i => (x[i] - mx) * (x[i] - mx)), b = ms - a * mx;
            if (b < 0) candidates.Add((1, 1 - 1 / b, -a / b));
        }
        else if (band.Length == 1)
            candidates.Add((1, 4, (3 * blend[band[0]] + 1) / x[band[0]]));
        else
        {
            // No blended frequency: any L that divides every low frequency and leaves every high one.
            var lowX = Enumerable.Range(0, x.Length).Where(i => blend[i] <= BlendTolerance).Select(i => x[i]).ToArray();
            var highX = Enumerable.Range(0, x.Length).Where(i => blend[i] >= 1 - BlendTolerance).Select(i => x[i]).ToArray();
            double context = Math.Floor(1 / lowX.Max());
            candidates.Add((1, 4, context));
            if (highX.Length > 0 && context * highX.Min() > 1) candidates.Add((1, context * highX.Min(), context));
        }
        foreach (var (low, high, context) in candidates)
        {
            if (!double.IsFinite(context) || context < 1 || context > int.MaxValue || !(high > low)) continue;
            foreach (var h in new[] { Math.Round(high, 4), high })
            {
                var scaling = new RopeScaling { RopeType = "llama3", Factor = factor, LowFreqFactor = low, HighFreqFactor = h, OriginalMaxPositionEmbeddings = (int)Math.Round(context) };
                var back = FrequencyDivisors(config.HeadDim, config.RopeTheta, scaling, config.MaxPositionEmbeddings);
                if (back.Zip(divisors).All(p => Math.Abs(p.First - p.Second) <= DivisorTolerance * p.Second)) return scaling;
            }
        }
        throw new InvalidDataException($"GGUF file '{source}': the divisors in '{RopeFreqsTensor}' are not those of any Llama 3 rope scaling (factor {factor}); import of this file is not supported.");
    }

    // float32 divisors against their double recomputation: a few ulps; blends nearer 0 or 1 than this are the plain bands.
    private const double DivisorTolerance = 1e-5, BlendTolerance = 1e-4;

    /// <summary>The config a GGUF file's hyperparameters describe (vocabulary size from its token list).</summary>
    public static LlamaConfig ReadConfig(GgufFile file)
    {
        string arch = file.Require("general.architecture").AsString("general.architecture");
        LlamaConfig config = arch switch
        {
            "llama" => new LlamaConfig(),
            "qwen2" => new Qwen2Config(),
            _ => throw new NotSupportedException($"GGUF file '{file.Path}' holds a '{arch}' model; this library imports llama (Llama, Mistral, SmolLM), qwen2 and gpt2."),
        };
        int U(string key) => file.RequireInt32($"{arch}.{key}");
        double F(string key) => file.RequireNumber($"{arch}.{key}");
        config.HiddenSize = U("embedding_length");
        config.IntermediateSize = U("feed_forward_length");
        config.NumHiddenLayers = U("block_count");
        config.NumAttentionHeads = U("attention.head_count");
        config.NumKeyValueHeads = file.Find($"{arch}.attention.head_count_kv") is null ? null : U("attention.head_count_kv");
        config.MaxPositionEmbeddings = U("context_length");
        config.RmsNormEps = F("attention.layer_norm_rms_epsilon");
        config.RopeTheta = file.Find($"{arch}.rope.freq_base") is null ? 10000.0 : F("rope.freq_base");
        if (file.Find($"{arch}.attention.key_length") is not null)
        {
            int key = U("attention.key_length");
            if (config.NumAttentionHeads <= 0 || key != config.HiddenSize / config.NumAttentionHeads) config.HeadDimField = key;
        }
        if (config.NumAttentionHeads <= 0 || config.HiddenSize <= 0)
            throw new InvalidDataException($"GGUF file '{file.Path}' has {arch}.attention.head_count {config.NumAttentionHeads} and {arch}.embedding_length {config.HiddenSize}; both must be positive.");
        if (file.Find($"{arch}.rope.dimension_count") is not null && U("rope.dimension_count") != config.HeadDim)
            throw new InvalidDataException($"GGUF file '{file.Path}': {arch}.rope.dimension_count ({U("rope.dimension_count")}) is not the head size ({config.HeadDim}) its other hyperparameters give; the {arch} architecture rotates whole heads.");
        config.RopeScaling = file.Find($"{arch}.rope.scaling.type")?.AsString($"{arch}.rope.scaling.type") switch
        {
            null or "none" => null,
            "linear" => new RopeScaling { RopeType = "linear", Factor = F("rope.scaling.factor") },
            "yarn" => new RopeScaling
            {
                RopeType = "yarn", Factor = F("rope.scaling.factor"),
                OriginalMaxPositionEmbeddings = file.Find($"{arch}.rope.scaling.original_context_length") is null ? null : U("rope.scaling.original_context_length"),
                BetaFast = file.Find($"{arch}.rope.scaling.yarn_beta_fast") is null ? null : F("rope.scaling.yarn_beta_fast"),
                BetaSlow = file.Find($"{arch}.rope.scaling.yarn_beta_slow") is null ? null : F("rope.scaling.yarn_beta_slow"),
            },
            var other => throw new NotSupportedException($"GGUF file '{file.Path}' uses rope scaling '{other}'; supported on import: none, linear, yarn."),
        };
        if (file.Contains(RopeFreqsTensor))
        {
            if (config.RopeScaling is not null)
                throw new NotSupportedException($"GGUF file '{file.Path}' has both {arch}.rope.scaling.type '{config.RopeScaling.Kind}' and '{RopeFreqsTensor}'; HF's rope_scaling holds one kind only.");
            var shape = file.ShapeOf(RopeFreqsTensor);
            if (shape.Length != 1 || shape[0] != config.HeadDim / 2)
                throw new InvalidDataException($"GGUF file '{file.Path}': '{RopeFreqsTensor}' has shape [{string.Join(", ", shape)}]; expected [{config.HeadDim / 2}], one divisor per rotary frequency.");
            using var stored = file.ReadTensor(RopeFreqsTensor);
            using var divisors = stored.to_type(ScalarType.Float32);
            config.RopeScaling = Llama3ScalingFromFactors(divisors.data<float>().ToArray(), config, file.Path);
        }
        config.TieWordEmbeddingsField = !file.Contains("output.weight");
        config.Architectures = [arch == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"];
        config.TorchDtype = "float32";
        return config;
    }

    private static (string Module, string? Suffix) SplitSuffix(string name)
    {
        int dot = name.LastIndexOf('.');
        if (dot < 0) return (name, null);
        var suffix = name[(dot + 1)..];
        return suffix is "weight" or "bias" ? (name[..dot], suffix) : (name, null);
    }

    [GeneratedRegex(@"^model\.layers\.(\d+)\.(.+)$")] private static partial Regex LayerPattern();
    [GeneratedRegex(@"^blk\.(\d+)\.(.+)$")] private static partial Regex BlockPattern();
}
