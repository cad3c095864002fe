using MLNetPeft.Architectures;
using MLNetPeft.Tokenization;
using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

/// <summary>Real HF checkpoints and tokenizer files from ../shared/data/hf_tiny (skipped when that folder is absent).</summary>
public class HfCheckpointTests
{
    private static readonly string[] Texts =
    [
        "Hello world", " Hello  world!\n\nIt's 2024 — naïve café 日本語", "<|endoftext|>x", "   leading spaces", "The quick brown fox jumps over the lazy dog.",
        "def f(x):\n    return x**2  # square", "I'm, you're, they'll, we'd", "1234567890 3.14159 $100",
    ];

    [SkippableTheory]
    [InlineData("lmbuddy_fake_gpt2", 50257, 50256)]
    [InlineData("lmbuddy_tiny_gpt2", 21, 20)]
    public void Gpt2CheckpointsLoadRunAndRoundTrip(string name, int vocab, int eos)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var folder = SharedData.Require($"hf_tiny/{name}");
        using var model = PretrainedModels.LoadCausalLM(folder);
        Assert.IsType<Gpt2ForCausalLM>(model);
        Assert.Equal(vocab, model.Config.VocabSize);
        Assert.Equal([eos], model.Config.EosTokenIds);
        Assert.Empty(model.LoadReport!.UnusedCheckpointKeys);
        using var ids = TinyModels.RandomIds(2, 12, vocab, 1);
        using var _ = no_grad();
        using var logits = model.Forward(ids);
        Assert.Equal(new long[] { 2, 12, vocab }, logits.shape);
        Assert.True(logits.isfinite().all().item<bool>());

        using var dir = new TempFolder();
        model.SavePretrained(dir.Path);
        Assert.True(File.Exists(dir.File("vocab.json")), "tokenizer files travel with the model");
        using var reloaded = PretrainedModels.LoadCausalLM(dir.Path);
        TensorAssert.BitIdentical(logits, reloaded.Forward(ids), "logits after save/load");
    }

    [SkippableFact]
    public void BertCheckpointLoadsAndReportsTheHeadItDoesNotUse()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var folder = SharedData.Require("hf_tiny/lmbuddy_bert_tiniest");
        using var model = PretrainedModels.LoadBert(folder);
        Assert.False(model.HasPooler); // BertLMHeadModel has no pooler
        Assert.Contains("cls.predictions.bias", model.LoadReport!.UnusedCheckpointKeys);
        Assert.DoesNotContain(model.LoadReport.UnusedCheckpointKeys, k => k.StartsWith("bert.", StringComparison.Ordinal));

        var tokenizer = TextTokenizer.FromPretrained(folder);
        var ids = tokenizer.Encode("Hello, world!");
        using var input = tensor(ids.Select(i => (long)i).ToArray()).unsqueeze(0);
        using var _ = no_grad();
        using var output = model.Forward(input);
        Assert.Equal(new long[] { 1, ids.Count, 4 }, output.LastHiddenState.shape);
        Assert.True(output.LastHiddenState.isfinite().all().item<bool>());

        using var dir = new TempFolder();
        model.SavePretrained(dir.Path);
        using var reloaded = PretrainedModels.LoadBert(dir.Path);
        using var again = reloaded.Forward(input);
        TensorAssert.BitIdentical(output.LastHiddenState, again.LastHiddenState, "hidden states after save/load");
    }

    [SkippableFact]
    public void BertTokenizerGivesTheIdsOfItsVocabTxt()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var folder = SharedData.Require("hf_tiny/lmbuddy_bert_tiniest");
        var lines = File.ReadAllLines(Path.Combine(folder, "vocab.txt"));
        int Id(string token) => Array.IndexOf(lines, token);
        var tokenizer = TextTokenizer.FromPretrained(folder);
        Assert.Equal([Id("[CLS]"), Id("hello"), Id(","), Id("world"), Id("!"), Id("[SEP]")], tokenizer.Encode("Hello, world!"));
        Assert.Equal([101, 7592, 1010, 2088, 999, 102], tokenizer.Encode("Hello, world!"));
        // WordPiece: greedy longest-prefix pieces, continuations marked "##" (this vocabulary has "una", "##ffa", "##ble").
        Assert.Equal([Id("una"), Id("##ffa"), Id("##ble")], tokenizer.Encode("unaffable", addSpecialTokens: false));
        Assert.Equal(Id("[PAD]"), tokenizer.PadId);
    }

    [SkippableFact]
    public void Gpt2TokenizerFilesGiveTheIdsOfTheirVocabulary()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var folder = SharedData.Require("hf_tiny/lmbuddy_fake_gpt2");
        var vocab = System.Text.Json.JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(Path.Combine(folder, "vocab.json")))!;
        var fromFiles = TextTokenizer.FromPretrained(folder);
        Assert.Equal([vocab["Hello"], vocab["Ġworld"]], fromFiles.Encode("Hello world"));
        Assert.Equal([vocab["<|endoftext|>"], vocab["x"]], fromFiles.Encode("<|endoftext|>x"));
        Assert.Equal(50256, fromFiles.EosId);
        Assert.False(fromFiles.AddBosToken);

        // The same vocabulary through tokenizer.json alone, and through the tiktoken GPT-2 package.
        using var dir = new TempFolder();
        File.Copy(Path.Combine(folder, "tokenizer.json"), dir.File("tokenizer.json"));
        File.Copy(Path.Combine(folder, "tokenizer_config.json"), dir.File("tokenizer_config.json"));
        var fromJson = TextTokenizer.FromPretrained(dir.Path);
        var tiktoken = TextTokenizer.FromTiktoken("gpt2");
        foreach (var text in Texts)
        {
            var ids = fromFiles.Encode(text);
            Assert.Equal(tiktoken.Encode(text), ids);
            Assert.Equal(ids, fromJson.Encode(text));
            Assert.Equal(text.Replace("<|endoftext|>", ""), fromFiles.Decode(ids));
        }
    }

    [SkippableFact]
    public void TinyGpt2VocabularyMergesAsItsMergesSay()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var folder = SharedData.Require("hf_tiny/lmbuddy_tiny_gpt2");
        var tokenizer = TextTokenizer.FromPretrained(folder);
        // merges: "Ġ l", "Ġl o", "Ġlo w", "e r"; vocab: Ġlow=14, er=15, Ġ=10, n=9, e=3, w=2.
        Assert.Equal([14, 15, 10, 9, 3, 2, 15], tokenizer.Encode(" lower newer"));
        Assert.Equal(20, tokenizer.EosId);
        Assert.Equal(" lower newer", tokenizer.Decode([14, 15, 10, 9, 3, 2, 15]));
    }
}
