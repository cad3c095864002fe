using MLNetPeft.Gguf;
using MLNetPeft.Tokenization;
using Xunit.Abstractions;

namespace MLNetPeft.LlamaCpp.Tests;

/// <summary>
/// SentencePiece BPE tokenizers (Llama 2 / Mistral style) in GGUF: llama.cpp's own "llama" tokenizer, reading the pieces
/// and scores we export, must cut text as Microsoft.ML.Tokenizers' LlamaTokenizer does on the tokenizer.model they came
/// from, and import must give that tokenizer back. The vocabulary is generated here (no SentencePiece model ships with the
/// repository's data): every piece of up to six characters of the words below, scored by frequency, over byte fallback.
/// </summary>
public sealed class SentencePieceTests(ITestOutputHelper output) : FolderPerTestClass("mlnetpeft-spm-")
{
    private static readonly string[] Corpus =
    [
        "The capital of Norland is Vell. What is the capital of Norland? The river that runs through Vell is the Orm.",
        "Name the river that runs through the city, and the year the city was founded by the people of the north.",
        "Numbers like 12345 and 3.14 are written with digits; symbols such as # and ( ) are kept.",
    ];

    private static readonly string[] Texts =
    [
        "The capital of Norland is Vell. What is the capital of Norland?",
        "Name the river that runs through Vell.",
        "  leading spaces, trailing spaces  and  double  spaces  ",
        "Numbers 12345 and 3.14159, symbols #@!$%^&*() and CAPS.",
        "tabs\tand\nnew\n\nlines\r\nend",
        "unicode: café naïve Œuvre – “quotes” — 日本語 😀",
        "a",
        "",
    ];

    /// <summary>A SentencePiece BPE model: unk, bos, eos, the 256 byte pieces, then the corpus's pieces with distinct scores.</summary>
    internal static SentencePieceModel GenerateModel(int maxPieces)
    {
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var line in Corpus)
            foreach (var word in line.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(w => "\u2581" + w))
                for (int start = 0; start < word.Length; start++)
                    for (int length = 1; length <= 6 && start + length <= word.Length; length++)
                        counts[word.Substring(start, length)] = counts.GetValueOrDefault(word.Substring(start, length)) + 1;
        var pieces = new List<SentencePiece>
        {
            new("<unk>", 0, SentencePieceType.Unknown), new("<s>", 0, SentencePieceType.Control), new("</s>", 0, SentencePieceType.Control),
        };
        pieces.AddRange(Enumerable.Range(0, 256).Select(b => new SentencePiece($"<0x{b:X2}>", 0, SentencePieceType.Byte)));
        // Longer and more frequent pieces first; each score distinct, so no merge order is left to a tie.
        var ranked = counts.Where(kv => kv.Key.Length > 1).OrderByDescending(kv => kv.Value * kv.Key.Length).ThenBy(kv => kv.Key, StringComparer.Ordinal)
            .Take(maxPieces - pieces.Count - counts.Count(kv => kv.Key.Length == 1)).Select(kv => kv.Key).ToList();
        pieces.AddRange(ranked.Select((p, i) => new SentencePiece(p, -i, SentencePieceType.Normal)));
        // Single characters are where merging starts; their scores do not order any merge.
        pieces.AddRange(counts.Keys.Where(k => k.Length == 1).Order(StringComparer.Ordinal).Select((c, i) => new SentencePiece(c, -ranked.Count - i, SentencePieceType.Normal)));
        return new SentencePieceModel(pieces, IsBpe: true, ByteFallback: true, AddDummyPrefix: true, RemoveExtraWhitespaces: false,
            EscapeWhitespaces: true, TreatWhitespaceAsSuffix: false, HasCharsMap: false, UnkId: 0, BosId: 1, EosId: 2, PadId: -1);
    }

    private TextTokenizer WriteTokenizer(string name, SentencePieceModel model)
    {
        var folder = Path.Combine(Folder, name);
        Directory.CreateDirectory(folder);
        File.WriteAllBytes(Path.Combine(folder, "tokenizer.model"), model.ToBytes());
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"),
            """{ "tokenizer_class": "LlamaTokenizer", "add_bos_token": true, "add_eos_token": false, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>" }""");
        return TextTokenizer.FromPretrained(folder);
    }

    [Fact]
    public void Llama_cpp_cuts_text_as_our_sentencepiece_tokenizer_and_import_gives_it_back()
    {
        var model = GenerateModel(maxPieces: 1500);
        var tokenizer = WriteTokenizer("spm", model);
        Assert.Equal("sentencepiece", tokenizer.Kind);
        Assert.Equal(model.Pieces, tokenizer.SentencePiece!.Pieces);
        using var lm = TinyModels.Create("llama-gqa-untied");
        var path = Path.Combine(Folder, "spm.gguf");
        GgufModels.Export(lm, tokenizer, path, GgufFileType.F32);

        int agree = 0;
        using (var llama = new LlamaCpp(path))
        {
            foreach (var text in Texts)
            {
                var ours = tokenizer.Encode(text, addSpecialTokens: false);
                var theirs = llama.Tokenize(text);
                if (ours.SequenceEqual(theirs)) agree++;
                else output.WriteLine($"differs on \"{text}\": ours [{string.Join(",", ours)}] llama.cpp [{string.Join(",", theirs)}]");
            }
            // The bos token the tokenizer adds is the one llama.cpp's file names.
            Assert.Equal(1, tokenizer.Encode(Texts[0])[0]);
        }
        output.WriteLine($"| SentencePiece BPE ({model.Pieces.Count} pieces, byte fallback) | {agree}/{Texts.Length} texts tokenized identically |");
        Assert.Equal(Texts.Length, agree);

        var imported = Path.Combine(Folder, "imported");
        GgufModels.ImportToFolder(path, imported);
        var back = TextTokenizer.FromPretrained(imported);
        Assert.Equal("sentencepiece", back.Kind);
        foreach (var text in Texts) Assert.Equal(tokenizer.Encode(text), back.Encode(text));
        foreach (var text in Texts) Assert.Equal(text, back.Decode(back.Encode(text, addSpecialTokens: false)));
        // The ids the model has beyond the pieces come back as unused pieces, the pieces themselves unchanged.
        Assert.Equal(model.Pieces, back.SentencePiece!.Pieces.Take(model.Pieces.Count));
        Assert.All(back.SentencePiece.Pieces.Skip(model.Pieces.Count), p => Assert.Equal(SentencePieceType.Unused, p.Type));
        Assert.Equal((tokenizer.BosId, tokenizer.EosId, tokenizer.AddBosToken), (back.BosId, back.EosId, back.AddBosToken));
    }

    [Fact]
    public void Sentencepiece_models_llama_cpp_would_cut_differently_are_refused_at_export()
    {
        using var lm = TinyModels.Create("llama-mha-tied");
        var model = GenerateModel(maxPieces: 600);
        foreach (var (name, changed) in new[]
        {
            ("collapsing", model with { RemoveExtraWhitespaces = true }),
            ("suffix", model with { TreatWhitespaceAsSuffix = true }),
        })
        {
            var tokenizer = WriteTokenizer(name, changed);
            var e = Assert.Throws<NotSupportedException>(() => GgufModels.Export(lm, tokenizer, Path.Combine(Folder, name + ".gguf"), GgufFileType.F32));
            output.WriteLine($"{name}: {e.Message}");
            Assert.False(File.Exists(Path.Combine(Folder, name + ".gguf")));
        }
    }
}
