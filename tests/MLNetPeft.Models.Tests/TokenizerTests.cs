using System.Text.Json.Nodes;
using MLNetPeft.Tokenization;

namespace MLNetPeft.Models.Tests;

public class TokenizerTests
{
    private static readonly Dictionary<string, int> TinyVocab = new()
    {
        ["l"] = 0, ["o"] = 1, ["w"] = 2, ["e"] = 3, ["r"] = 4, ["n"] = 5, ["Ġ"] = 6, ["Ġl"] = 7, ["Ġlo"] = 8, ["Ġlow"] = 9,
        ["er"] = 10, ["Ġlower"] = 11, ["<|endoftext|>"] = 12, ["<pad>"] = 13,
    };
    private static readonly string[] TinyMerges = ["Ġ l", "Ġl o", "Ġlo w", "e r", "Ġlow er"];

    private static void WriteTinyBpe(TempFolder dir, bool asTokenizerJson)
    {
        var vocab = new JsonObject();
        foreach (var (k, v) in TinyVocab) vocab[k] = v;
        if (asTokenizerJson)
        {
            var merges = new JsonArray();
            foreach (var m in TinyMerges) merges.Add(m);
            File.WriteAllText(dir.File("tokenizer.json"), new JsonObject
            {
                ["added_tokens"] = new JsonArray(new JsonObject { ["id"] = 12, ["content"] = "<|endoftext|>", ["special"] = true }),
                ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = true },
                ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = merges },
            }.ToJsonString());
        }
        else
        {
            File.WriteAllText(dir.File("vocab.json"), vocab.ToJsonString());
            File.WriteAllText(dir.File("merges.txt"), "#version: 0.2\n" + string.Join("\n", TinyMerges) + "\n");
        }
        File.WriteAllText(dir.File("tokenizer_config.json"),
            """
            {"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>", "special": true}, "pad_token": "<pad>", "add_bos_token": true,
             "added_tokens_decoder": {"12": {"content": "<|endoftext|>", "special": true}}}
            """);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ByteLevelBpeFollowsTheMergesOfItsVocabulary(bool asTokenizerJson)
    {
        using var dir = new TempFolder();
        WriteTinyBpe(dir, asTokenizerJson);
        var tokenizer = TextTokenizer.FromPretrained(dir.Path);
        Assert.Equal("bpe", tokenizer.Kind);
        // " lower" merges all the way to Ġlower; " newer" has only the e+r merge.
        Assert.Equal([11, 6, 5, 3, 2, 10], tokenizer.Encode(" lower newer", addSpecialTokens: false));
        Assert.Equal([12, 11, 12], tokenizer.Encode(" lower<|endoftext|>"));
        Assert.Equal(12, tokenizer.BosId);
        Assert.Equal(12, tokenizer.EosId);
        Assert.Equal(13, tokenizer.PadId);
        Assert.True(tokenizer.AddBosToken);
        Assert.Equal(" lower newer", tokenizer.Decode([11, 6, 5, 3, 2, 10]));
        Assert.Equal(" lower", tokenizer.Decode([12, 11, 12]));
        Assert.Equal("<|endoftext|> lower", tokenizer.Decode([12, 11], skipSpecialTokens: false));
    }

    [Fact]
    public void WordPieceVocabularyGivesBertIds()
    {
        using var dir = new TempFolder();
        File.WriteAllLines(dir.File("vocab.txt"), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", ",", "!"]);
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"do_lower_case": true, "pad_token": "[PAD]", "cls_token": "[CLS]"}""");
        var tokenizer = TextTokenizer.FromPretrained(dir.Path);
        Assert.Equal("wordpiece", tokenizer.Kind);
        Assert.Equal([2, 5, 6, 7, 9, 3], tokenizer.Encode("Hello worlds!"));
        Assert.Equal([5, 8, 1], tokenizer.Encode("hello, xyz", addSpecialTokens: false));
        Assert.Equal(0, tokenizer.PadId);
    }

    [Fact]
    public void TiktokenPackagesGiveTheirPublishedIds()
    {
        var gpt2 = TextTokenizer.FromTiktoken("gpt2");
        Assert.Equal([15496, 995], gpt2.Encode("Hello world"));
        Assert.Equal(50256, gpt2.EosId);
        var cl100k = TextTokenizer.FromTiktoken("cl100k_base");
        Assert.Equal([9906, 1917], cl100k.Encode("Hello world"));
        var o200k = TextTokenizer.FromTiktoken("o200k_base");
        foreach (var text in new[] { "Hello world", "naïve café — 日本語 1234567", "  spaced\n\nlines\t" })
        {
            Assert.Equal(text, o200k.Decode(o200k.Encode(text)));
            Assert.Equal(text, cl100k.Decode(cl100k.Encode(text)));
        }
        Assert.Throws<ArgumentException>(() => TextTokenizer.FromTiktoken("p99k"));
    }

    [Fact]
    public void FolderWithoutTokenizerFilesIsAClearError()
    {
        using var dir = new TempFolder();
        var e = Assert.Throws<FileNotFoundException>(() => TextTokenizer.FromPretrained(dir.Path));
        Assert.Contains("vocab.json + merges.txt", e.Message);
    }

    [Fact]
    public void ChatTemplatesAreRecognisedAndWritten()
    {
        Assert.Equal(ChatFormat.ChatMl, ChatTemplate.Detect("{% for m in messages %}<|im_start|>{{ m.role }}..."));
        Assert.Equal(ChatFormat.Llama3, ChatTemplate.Detect("...<|start_header_id|>..."));
        Assert.Equal(ChatFormat.Llama2, ChatTemplate.Detect("{{ bos_token + '[INST] ' }}"));
        Assert.Equal(ChatFormat.Alpaca, ChatTemplate.Detect(null));

        ChatMessage[] chat = [new("system", "Be brief."), new("user", "Hi?")];
        Assert.Equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n",
            new ChatTemplate(ChatFormat.ChatMl).Apply(chat));
        Assert.Equal("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi? [/INST]", new ChatTemplate(ChatFormat.Llama2, "<s>", "</s>").Apply(chat));
        Assert.Equal("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            new ChatTemplate(ChatFormat.Llama3, "<|begin_of_text|>").Apply(chat));
        var alpaca = new ChatTemplate(ChatFormat.Alpaca).FormatInstruction("Add 2 and 3.", "numbers");
        Assert.EndsWith("### Instruction:\nAdd 2 and 3.\n\n### Input:\nnumbers\n\n### Response:\n", alpaca);
        Assert.Throws<ArgumentException>(() => new ChatTemplate(ChatFormat.ChatMl).Apply([new("robot", "x")]));
    }
}

/// <summary>A SentencePiece <c>tokenizer.model</c> (protobuf ModelProto) written byte by byte, so the SentencePiece path is tested without a downloaded model.</summary>
public class SentencePieceTokenizerTests
{
    private static void Varint(Stream s, ulong v) { while (v >= 0x80) { s.WriteByte((byte)(v | 0x80)); v >>= 7; } s.WriteByte((byte)v); }
    private static void Tag(Stream s, int field, int wire) => Varint(s, (ulong)(field << 3 | wire));
    private static void Bytes(Stream s, int field, byte[] b) { Tag(s, field, 2); Varint(s, (ulong)b.Length); s.Write(b); }
    private static void Int(Stream s, int field, long v) { Tag(s, field, 0); Varint(s, (ulong)v); }

    private static byte[] Message(Action<Stream> write) { var m = new MemoryStream(); write(m); return m.ToArray(); }

    // Pieces: id, text, score, type (1 normal, 2 unknown, 3 control). Scores order the BPE merges.
    private static readonly (string Piece, float Score, int Type)[] Pieces =
    [
        ("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3),
        ("▁", -20, 1), ("h", -20, 1), ("e", -20, 1), ("l", -20, 1), ("o", -20, 1), ("w", -20, 1), ("r", -20, 1), ("d", -20, 1),
        ("he", -1, 1), ("ll", -2, 1), ("hell", -3, 1), ("hello", -4, 1), ("▁hello", -5, 1),
        ("wo", -6, 1), ("wor", -7, 1), ("worl", -8, 1), ("world", -9, 1), ("▁world", -10, 1),
    ];

    private static byte[] ModelProto() => Message(m =>
    {
        foreach (var (piece, score, type) in Pieces)
        {
            Bytes(m, 1, Message(p =>
            {
                Bytes(p, 1, System.Text.Encoding.UTF8.GetBytes(piece));
                Tag(p, 2, 5); p.Write(BitConverter.GetBytes(score));
                Int(p, 3, type);
            }));
        }
        Bytes(m, 2, Message(t =>                      // TrainerSpec
        {
            Int(t, 3, 2);                                // model_type = BPE
            Int(t, 4, Pieces.Length);                    // vocab_size
            Int(t, 40, 0); Int(t, 41, 1); Int(t, 42, 2); // unk, bos, eos ids
            Tag(t, 43, 0); Varint(t, unchecked((ulong)-1L)); // pad_id = -1
        }));
        Bytes(m, 3, Message(n =>                      // NormalizerSpec
        {
            Bytes(n, 1, "identity"u8.ToArray());
            Int(n, 3, 1); Int(n, 4, 1); Int(n, 5, 1);   // add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces
        }));
    });

    [Fact]
    public void SentencePieceModelEncodesByItsPiecesAndAddsBos()
    {
        using var dir = new TempFolder();
        File.WriteAllBytes(dir.File("tokenizer.model"), ModelProto());
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"bos_token": "<s>", "eos_token": "</s>"}""");
        var tokenizer = MLNetPeft.Tokenization.TextTokenizer.FromPretrained(dir.Path);
        Assert.Equal("sentencepiece", tokenizer.Kind);
        Assert.Equal(1, tokenizer.BosId);
        Assert.Equal(2, tokenizer.EosId);
        Assert.True(tokenizer.AddBosToken); // SentencePiece (Llama) models add <s> unless add_bos_token says otherwise
        Assert.Equal([1, 15, 20], tokenizer.Encode("hello world"));
        Assert.Equal([15, 3, 16], tokenizer.Encode("hello wo", addSpecialTokens: false)); // no "▁wo" piece: ▁hello ▁ wo
        Assert.Equal("hello world", tokenizer.Decode([1, 15, 20]));
    }
}
