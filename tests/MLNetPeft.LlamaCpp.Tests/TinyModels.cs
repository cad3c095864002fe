using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using MLNetPeft.BaseModel;
using MLNetPeft.Tokenization;
using static TorchSharp.torch;

namespace MLNetPeft.LlamaCpp.Tests;

/// <summary>Tiny random models of each Llama-family variant, sharing the bundled model's tokenizer (2048 ids).</summary>
internal static class TinyModels
{
    public static TextTokenizer Tokenizer { get; } = TextTokenizer.FromPretrained(BundledBaseModel.Folder);

    public static LlamaConfig Config(string variant)
    {
        LlamaConfig c = variant.StartsWith("qwen2", StringComparison.Ordinal) ? new Qwen2Config() : new LlamaConfig();
        c.VocabSize = 2048;
        c.HiddenSize = 64;
        c.IntermediateSize = 160;
        c.NumHiddenLayers = 2;
        c.NumAttentionHeads = 4;
        c.NumKeyValueHeads = 2;
        c.MaxPositionEmbeddings = 512;
        c.RmsNormEps = 1e-5;
        c.RopeTheta = 10000;
        c.InitializerRange = 0.15;   // peaked logits: greedy decoding has no near-ties to flip
        c.TieWordEmbeddingsField = false;
        c.EosTokenIdNode = System.Text.Json.Nodes.JsonValue.Create(2047);
        c.BosTokenId = 2047;
        switch (variant)
        {
            case "llama-gqa-untied": break;
            case "llama-mha-tied": c.NumKeyValueHeads = 4; c.TieWordEmbeddingsField = true; break;
            case "llama-head-dim": c.HeadDimField = 32; c.NumKeyValueHeads = 1; break;
            case "llama-rope-linear": c.RopeScaling = new RopeScaling { RopeType = "linear", Factor = 4 }; break;
            case "llama-rope-llama3":
                c.RopeScaling = new RopeScaling { RopeType = "llama3", Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 64 };
                break;
            case "llama-rope-yarn": c.RopeScaling = new RopeScaling { RopeType = "yarn", Factor = 4, OriginalMaxPositionEmbeddings = 128 }; break;
            case "mistral": c.ModelType = "mistral"; c.SlidingWindow = 4096; break;
            case "qwen2": c.RopeTheta = 1e6; break;
            case "qwen2-tied": c.RopeTheta = 1e6; c.TieWordEmbeddingsField = true; c.NumKeyValueHeads = 1; break;
            default: throw new ArgumentException(variant);
        }
        c.Architectures = [c is Qwen2Config ? "Qwen2ForCausalLM" : c.ModelType == "mistral" ? "MistralForCausalLM" : "LlamaForCausalLM"];
        return c;
    }

    public static readonly string[] Variants =
        ["llama-gqa-untied", "llama-mha-tied", "llama-head-dim", "llama-rope-linear", "llama-rope-llama3", "llama-rope-yarn", "mistral", "qwen2", "qwen2-tied", "gpt2"];

    /// <summary>A model of <paramref name="variant"/> with random weights, norms and biases (so that a misplaced one shows).</summary>
    public static CausalLanguageModel Create(string variant, long seed = 7)
    {
        ModelConfig config = variant == "gpt2"
            ? new Gpt2Config { VocabSize = 2048, NEmbd = 64, NLayer = 2, NHead = 4, NPositions = 512, ResidPdrop = 0, EmbdPdrop = 0, AttnPdrop = 0, InitializerRange = 0.15 }
            : Config(variant);
        var model = PretrainedModels.CreateCausalLM(config);
        model.InitializeWeights(seed);
        var generator = new TorchSharp.torch.Generator((ulong)seed + 1);
        using (no_grad())
            foreach (var (name, p) in model.named_parameters())
                if (p.dim() == 1) p.normal_(name.EndsWith("bias", StringComparison.Ordinal) ? 0 : 1, 0.2, generator);
        model.eval();
        return model;
    }

    /// <summary>Rounds the matrices of <paramref name="model"/> as a GGUF file of <paramref name="fileType"/> stores them (vectors stay float32).</summary>
    public static void RoundAsStored(CausalLanguageModel model, MLNetPeft.Gguf.GgufFileType fileType)
    {
        using var _ = no_grad();
        foreach (var (_, p) in model.named_parameters())
        {
            if (p.dim() != 2) continue;
            if (fileType == MLNetPeft.Gguf.GgufFileType.Q8_0 && p.shape[1] % 32 == 0)
            {
                var values = p.data<float>().ToArray();
                var blocks = new byte[values.Length / 32 * 34];
                MLNetPeft.Gguf.GgmlCodec.QuantizeQ8_0(values, blocks);
                MLNetPeft.Gguf.GgmlCodec.DequantizeQ8_0(blocks, values);
                using var rounded = tensor(values).reshape(p.shape);
                p.copy_(rounded);
            }
            else if (fileType != MLNetPeft.Gguf.GgufFileType.F32)
            {
                using var half = p.to(ScalarType.Float16);
                p.copy_(half);
            }
        }
    }
}
