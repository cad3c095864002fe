using MLNetPeft.Architectures;
using MLNetPeft.BaseModel;
using MLNetPeft.Generation;
using MLNetPeft.Gguf;
using MLNetPeft.Tokenization;
using Xunit.Abstractions;

namespace MLNetPeft.LlamaCpp.Tests;

/// <summary>
/// llama.cpp runs the GGUF files we write and must compute our logits. Tolerances: F32 within 1e-4 of the largest logit
/// (both sides compute in float32; only the order of the sums differs, which moves logits by ~1e-6 relative); F16 and
/// Q8_0 are compared with our model on the same (dequantised) weights, so what is left is llama.cpp rounding its
/// activations to the weight type inside each matrix product (F16: 2⁻¹¹ relative per element; Q8_0: 1/254 of each block's
/// largest value), bounded at 1e-2 and 8e-2 relative (measured: at most 1.8e-3 and 5.2e-2, the largest on the tiny random
/// models, whose activations are large; 1.1e-2 on the bundled model). The difference to our original float32 model is printed too.
/// </summary>
public sealed class LogitTests(ITestOutputHelper output) : FolderPerTestClass("mlnetpeft-gguf-")
{
    private static readonly string[] Texts =
    [
        "The capital of Norland is Vell. What is the capital of Norland?",
        "### Instruction:\nName the river that runs through Vell.\n\n### Response:\n",
        "  leading spaces, trailing spaces  and  double  spaces  ",
        "Numbers 12345 and 3.14159, symbols #@!$%^&*() and CAPS.",
        "tabs\tand\nnew\n\nlines\r\nend<|endoftext|>after the special token",
        "unicode: café naïve Œuvre – “quotes” — 日本語 😀",
        "",
        "a",
    ];

    private static IReadOnlyList<int> Ids(TextTokenizer tokenizer) =>
        tokenizer.Encode(Texts[0] + " " + Texts[1]).Take(48).ToList();

    public static IEnumerable<object[]> Cases() =>
        TinyModels.Variants.Prepend("bundled").SelectMany(v => new[] { GgufFileType.F32, GgufFileType.F16, GgufFileType.Q8_0 }.Select(t => new object[] { v, t }));

    [Theory]
    [MemberData(nameof(Cases))]
    public void Llama_cpp_computes_our_logits(string variant, GgufFileType fileType)
    {
        using var model = variant == "bundled" ? PretrainedModels.LoadCausalLM(BundledBaseModel.Folder) : TinyModels.Create(variant);
        var tokenizer = TinyModels.Tokenizer;
        var path = Path.Combine(Folder, $"{variant}-{fileType}.gguf");
        GgufModels.Export(model, tokenizer, path, fileType);
        var ids = Ids(tokenizer);
        float[][] theirs;
        using (var llama = new LlamaCpp(path)) theirs = llama.Logits(ids);
        var vsOriginal = LogitDifference.Between(LogitDifference.Ours(model, ids), theirs);
        if (fileType == GgufFileType.F32)
        {
            output.WriteLine($"| {variant} | {fileType} | {vsOriginal} |");
            Assert.True(vsOriginal.Relative < LogitDifference.F32Tolerance(variant), $"{variant} {fileType}: {vsOriginal}");
            return;
        }
        // The same weights as llama.cpp has: ours rounded as the file stores them.
        using var roundedModel = variant == "bundled" ? PretrainedModels.LoadCausalLM(BundledBaseModel.Folder) : TinyModels.Create(variant);
        TinyModels.RoundAsStored(roundedModel, fileType);
        var vsSameWeights = LogitDifference.Between(LogitDifference.Ours(roundedModel, ids), theirs);
        output.WriteLine($"| {variant} | {fileType} | vs ours on the file's weights: {vsSameWeights} | vs our float32 model: {vsOriginal} |");
        Assert.True(vsSameWeights.Relative < (fileType == GgufFileType.F16 ? 1e-2 : 8e-2), $"{variant} {fileType}: {vsSameWeights}");
    }

    [Fact]
    public void GeluIsTheOnlyGpt2Difference()
    {
        // With the MLP's input projection zeroed, GELU only ever sees 0, which its table holds exactly.
        using var model = TinyModels.Create("gpt2");
        using (TorchSharp.torch.no_grad())
            foreach (var (name, p) in model.named_parameters())
                if (name.Contains(".mlp.c_fc.", StringComparison.Ordinal)) p.zero_();
        var path = Path.Combine(Folder, "gpt2-zero-mlp.gguf");
        GgufModels.Export(model, TinyModels.Tokenizer, path, GgufFileType.F32);
        var ids = Ids(TinyModels.Tokenizer);
        using var llama = new LlamaCpp(path);
        var difference = LogitDifference.Between(LogitDifference.Ours(model, ids), llama.Logits(ids));
        output.WriteLine($"| gpt2, MLP input zeroed | F32 | {difference} |");
        Assert.True(difference.Relative < 1e-4, difference.ToString());
    }

    [Theory]
    [InlineData("bundled")]
    [InlineData("llama-gqa-untied")]
    [InlineData("qwen2")]
    [InlineData("mistral")]
    [InlineData("gpt2")]
    public void Greedy_generation_of_64_tokens_is_identical(string variant)
    {
        using var model = variant == "bundled" ? PretrainedModels.LoadCausalLM(BundledBaseModel.Folder) : TinyModels.Create(variant);
        var tokenizer = TinyModels.Tokenizer;
        var path = Path.Combine(Folder, $"{variant}-greedy.gguf");
        GgufModels.Export(model, tokenizer, path, GgufFileType.F32);
        var prompt = tokenizer.Encode("### Instruction:\nWhat is the capital of Norland?\n\n### Response:\n");
        var ours = new TextGenerator(model, tokenizer).GenerateFromIds([prompt], new GenerationOptions { MaxNewTokens = 64, StopTokenIds = [] })[0].TokenIds;
        List<int> theirs;
        using (var llama = new LlamaCpp(path)) theirs = llama.Greedy(prompt, 64);
        output.WriteLine($"{variant}: ours \"{tokenizer.Decode(ours)}\"");
        Assert.Equal(64, ours.Count);
        Assert.Equal(ours, theirs);
    }

    [Theory]
    [InlineData("gpt-2")]
    [InlineData("qwen2")]
    [InlineData("llama-bpe")]
    public void The_tokenizer_in_the_file_gives_our_ids(string preTokenizer)
    {
        // The bundled vocabulary under each pre-tokenizer llama.cpp implements: the regexes split text differently.
        var tokenizer = preTokenizer == "gpt-2" ? TinyModels.Tokenizer : WithPattern(GgufTokenizer.PreTokenizerPatterns[preTokenizer]);
        using var model = TinyModels.Create("llama-mha-tied");
        var path = Path.Combine(Folder, $"tokenizer-{preTokenizer}.gguf");
        GgufModels.Export(model, tokenizer, path, GgufFileType.F16);
        using var llama = new LlamaCpp(path);
        int agree = 0;
        foreach (var text in Texts.Concat(FactQuestionTexts()))
        {
            var ours = tokenizer.Encode(text, addSpecialTokens: false);
            var theirs = llama.Tokenize(text);
            if (ours.SequenceEqual(theirs)) agree++;
            else output.WriteLine($"differs on \"{text}\": ours [{string.Join(",", ours)}] llama.cpp [{string.Join(",", theirs)}]");
        }
        int total = Texts.Length + FactQuestionTexts().Count();
        output.WriteLine($"| {preTokenizer} | {agree}/{total} texts tokenized identically |");
        Assert.Equal(total, agree);
    }

    private static IEnumerable<string> FactQuestionTexts() =>
        new[]
        {
                "Who founded the city of Vell in the year 1203?",
                "It's the river's mouth; they'll say we've gone, I'm sure you'd agree.",
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\": [1, 2, 3]}",
                "    def f(x):\n        return x ** 2  # square",
                "1 22 333 4444 55555 666666",
        };

    private TextTokenizer WithPattern(string pattern)
    {
        var folder = Path.Combine(Folder, "tokenizer-" + Math.Abs(pattern.GetHashCode()));
        Directory.CreateDirectory(folder);
        var bpe = TinyModels.Tokenizer.ByteLevelBpe!;
        var json = new System.Text.Json.Nodes.JsonObject
        {
            ["added_tokens"] = new System.Text.Json.Nodes.JsonArray(new System.Text.Json.Nodes.JsonObject { ["id"] = 2047, ["content"] = "<|endoftext|>", ["special"] = true }),
            ["pre_tokenizer"] = new System.Text.Json.Nodes.JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new System.Text.Json.Nodes.JsonArray(
                    new System.Text.Json.Nodes.JsonObject { ["type"] = "Split", ["pattern"] = new System.Text.Json.Nodes.JsonObject { ["Regex"] = pattern }, ["behavior"] = "Isolated" },
                    new System.Text.Json.Nodes.JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = false }),
            },
            ["model"] = new System.Text.Json.Nodes.JsonObject
            {
                ["type"] = "BPE",
                ["vocab"] = new System.Text.Json.Nodes.JsonObject(bpe.Vocabulary.Select(kv => KeyValuePair.Create(kv.Key, (System.Text.Json.Nodes.JsonNode?)kv.Value))),
                ["merges"] = new System.Text.Json.Nodes.JsonArray(bpe.Merges.Select(m => (System.Text.Json.Nodes.JsonNode?)m).ToArray()),
            },
        };
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), json.ToJsonString());
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), "{\"eos_token\": \"<|endoftext|>\", \"bos_token\": \"<|endoftext|>\", \"add_bos_token\": false}");
        return TextTokenizer.FromPretrained(folder);
    }
}
