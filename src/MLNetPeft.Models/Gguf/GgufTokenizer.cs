using System.Text.Json;
using System.Text.Json.Nodes;
using MLNetPeft.Checkpoints;
using MLNetPeft.Tokenization;

namespace MLNetPeft.Gguf;

/// <summary>
/// Tokenizers in GGUF's <c>tokenizer.ggml.*</c> keys and back to HF tokenizer files that Microsoft.ML.Tokenizers reads:
/// byte-level BPE as llama.cpp's "gpt2" model (tokens, token types, merges, the pre-tokenizer by llama.cpp's name for its
/// regex), SentencePiece BPE as its "llama" model (pieces, scores, types, the space prefix; back to a tokenizer.model).
/// </summary>
public static class GgufTokenizer
{
    /// <summary>llama.cpp's token types (<c>llama_token_type</c>).</summary>
    public const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6;

    /// <summary>HF's Split regexes of the families llama.cpp knows, by llama.cpp's <c>tokenizer.ggml.pre</c> name.</summary>
    public static readonly IReadOnlyDictionary<string, string> PreTokenizerPatterns = new Dictionary<string, string>
    {
        ["gpt-2"] = TextTokenizer.Gpt2Pattern,
        ["qwen2"] = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ["llama-bpe"] = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    };

    /// <summary>Writes <paramref name="tokenizer"/> for a model of <paramref name="vocabSize"/> ids (ids without a token become unused "[PADn]" entries, as the converter writes them).</summary>
    /// <exception cref="NotSupportedException">The tokenizer is not byte-level BPE, or its regex is not one llama.cpp implements.</exception>
    public static void AddMetadata(GgufWriter writer, TextTokenizer tokenizer, int vocabSize)
    {
        if (tokenizer.SentencePiece is { } sentencePiece)
        {
            AddSentencePieceMetadata(writer, tokenizer, sentencePiece, vocabSize);
            return;
        }
        var bpe = tokenizer.ByteLevelBpe ?? throw new NotSupportedException(
            $"GGUF export writes byte-level BPE (GPT-2, Llama 3, Qwen2 style) and SentencePiece BPE (Llama 2, Mistral style) tokenizers; this one is '{tokenizer.Kind}'.");
        var pre = PreTokenizerPatterns.FirstOrDefault(kv => kv.Value == bpe.Pattern).Key
            ?? throw new NotSupportedException($"The tokenizer's pre-tokenization regex is none of those llama.cpp implements ({string.Join(", ", PreTokenizerPatterns.Keys)}): '{bpe.Pattern}'.");
        if (bpe.AddPrefixSpace)
            throw new NotSupportedException("The tokenizer adds a prefix space (add_prefix_space), which llama.cpp's BPE tokenizer does not do.");
        if (bpe.Vocabulary.Values.Concat(tokenizer.SpecialTokens.Values).Any(id => id < 0 || id >= vocabSize))
            throw new ArgumentException($"The tokenizer has ids outside the model's vocabulary of {vocabSize}.", nameof(vocabSize));
        var tokens = new string?[vocabSize];
        var types = new int[vocabSize];
        foreach (var (token, id) in bpe.Vocabulary) { tokens[id] = token; types[id] = Normal; }
        foreach (var (token, id) in tokenizer.SpecialTokens) { tokens[id] = token; types[id] = Control; }
        for (int i = 0; i < vocabSize; i++)
            if (tokens[i] is null) { tokens[i] = $"[PAD{i}]"; types[i] = Unused; }

        writer.Add("tokenizer.ggml.model", GgufValue.Of("gpt2"))
            .Add("tokenizer.ggml.pre", GgufValue.Of(pre))
            .Add("tokenizer.ggml.tokens", GgufValue.Of(tokens!))
            .Add("tokenizer.ggml.token_type", GgufValue.Of(types))
            .Add("tokenizer.ggml.merges", GgufValue.Of(bpe.Merges.ToArray()));
        AddSpecialTokens(writer, tokenizer);
    }

    // llama.cpp's "llama" vocabulary: SentencePiece BPE over ▁-escaped text with byte fallback, no normalization map.
    private static void AddSentencePieceMetadata(GgufWriter writer, TextTokenizer tokenizer, SentencePieceModel model, int vocabSize)
    {
        if (!model.IsBpe)
            throw new NotSupportedException("GGUF export writes SentencePiece BPE models (llama.cpp's 'llama' vocabulary); this one is a unigram model.");
        if (model.HasCharsMap || model.RemoveExtraWhitespaces || !model.EscapeWhitespaces || model.TreatWhitespaceAsSuffix)
            throw new NotSupportedException("The SentencePiece model normalizes text (a character map, removing extra whitespace, no ▁ escaping or " +
                "whitespace as suffix), which llama.cpp's 'llama' vocabulary does not do; it would tokenize differently.");
        if (model.Pieces.Count > vocabSize || tokenizer.SpecialTokens.Values.Any(id => id < 0 || id >= vocabSize))
            throw new ArgumentException($"The tokenizer has {model.Pieces.Count} pieces or special ids beyond the model's vocabulary of {vocabSize}.", nameof(vocabSize));
        var tokens = new string[vocabSize];
        var scores = new float[vocabSize];
        var types = new int[vocabSize];
        for (int i = 0; i < vocabSize; i++)
        {
            if (i < model.Pieces.Count) (tokens[i], scores[i], types[i]) = (model.Pieces[i].Piece, model.Pieces[i].Score, (int)model.Pieces[i].Type);
            else (tokens[i], scores[i], types[i]) = ($"[PAD{i}]", 0f, Unused);
        }
        foreach (var (token, id) in tokenizer.SpecialTokens) { tokens[id] = token; types[id] = Control; }
        writer.Add("tokenizer.ggml.model", GgufValue.Of("llama"))
            .Add("tokenizer.ggml.tokens", GgufValue.Of(tokens))
            .Add("tokenizer.ggml.scores", GgufValue.Of(scores))
            .Add("tokenizer.ggml.token_type", GgufValue.Of(types))
            .Add("tokenizer.ggml.add_space_prefix", GgufValue.Of(model.AddDummyPrefix))
            .Add("tokenizer.ggml.unknown_token_id", GgufValue.Of((uint)model.UnkId));
        AddSpecialTokens(writer, tokenizer);
    }

    private static void AddSpecialTokens(GgufWriter writer, TextTokenizer tokenizer)
    {
        if (tokenizer.BosId is { } bos) writer.Add("tokenizer.ggml.bos_token_id", GgufValue.Of((uint)bos));
        if (tokenizer.EosId is { } eos) writer.Add("tokenizer.ggml.eos_token_id", GgufValue.Of((uint)eos));
        if (tokenizer.PadId is { } pad) writer.Add("tokenizer.ggml.padding_token_id", GgufValue.Of((uint)pad));
        writer.Add("tokenizer.ggml.add_bos_token", GgufValue.Of(tokenizer.AddBosToken))
            .Add("tokenizer.ggml.add_eos_token", GgufValue.Of(tokenizer.AddEosToken));
        if (tokenizer.ChatTemplateText is { Length: > 0 } template) writer.Add("tokenizer.chat_template", GgufValue.Of(template));
    }

    /// <summary>
    /// Writes tokenizer.json and tokenizer_config.json into <paramref name="folder"/> from a GGUF file's tokenizer keys,
    /// so that <see cref="TextTokenizer.FromPretrained"/> (and HF's AutoTokenizer) build the same tokenizer.
    /// </summary>
    public static void WritePretrainedFiles(GgufFile file, string folder)
    {
        var model = file.Require("tokenizer.ggml.model").AsString("tokenizer.ggml.model");
        if (model == "llama")
        {
            WriteSentencePieceFiles(file, folder);
            return;
        }
        if (model != "gpt2")
            throw new NotSupportedException($"GGUF file '{file.Path}' has a '{model}' tokenizer; import reads byte-level BPE ('gpt2') and SentencePiece BPE ('llama') tokenizers.");
        var preName = file.Find("tokenizer.ggml.pre")?.AsString("tokenizer.ggml.pre") ?? "default";
        if (!PreTokenizerPatterns.TryGetValue(preName, out var pattern))
            throw new NotSupportedException($"GGUF file '{file.Path}' has pre-tokenizer '{preName}'; import knows {string.Join(", ", PreTokenizerPatterns.Keys)}.");
        var tokens = file.Require("tokenizer.ggml.tokens").AsStringArray("tokenizer.ggml.tokens");
        var types = file.Find("tokenizer.ggml.token_type")?.AsInt32Array("tokenizer.ggml.token_type") ?? Enumerable.Repeat(Normal, tokens.Length).ToArray();
        if (types.Length != tokens.Length)
            throw new InvalidDataException($"GGUF file '{file.Path}' has {tokens.Length} tokens but {types.Length} token types.");
        var merges = file.Require("tokenizer.ggml.merges").AsStringArray("tokenizer.ggml.merges");

        var vocab = new JsonObject();
        var added = new JsonArray();
        var decoder = new JsonObject();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int id = 0; id < tokens.Length; id++)
        {
            if (types[id] == Unused) continue;
            if (!seen.Add(tokens[id])) throw new InvalidDataException($"GGUF file '{file.Path}' has token '{tokens[id]}' twice (id {id}).");
            if (types[id] is Control or UserDefined)
            {
                bool special = types[id] == Control;
                added.Add(new JsonObject { ["id"] = id, ["content"] = tokens[id], ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = !special, ["special"] = special });
                decoder[id.ToString(System.Globalization.CultureInfo.InvariantCulture)] = new JsonObject { ["content"] = tokens[id], ["special"] = special };
            }
            else vocab[tokens[id]] = id;
        }
        JsonNode byteLevel = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = preName == "gpt-2" };
        JsonNode preTokenizer = preName == "gpt-2" ? byteLevel : new JsonObject
        {
            ["type"] = "Sequence",
            ["pretokenizers"] = new JsonArray(
                new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = pattern }, ["behavior"] = "Isolated", ["invert"] = false },
                byteLevel),
        };
        var tokenizerJson = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = added,
            ["pre_tokenizer"] = preTokenizer,
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["fuse_unk"] = false, ["byte_fallback"] = false,
                ["vocab"] = vocab, ["merges"] = new JsonArray(merges.Select(m => (JsonNode)m).ToArray()),
            },
        };
        string? Token(string key) => file.Find(key) is { } v && v.AsInteger(key) is var id && id >= 0 && id < tokens.Length ? tokens[id] : null;
        var config = new JsonObject
        {
            ["tokenizer_class"] = "PreTrainedTokenizerFast",
            ["add_bos_token"] = file.Find("tokenizer.ggml.add_bos_token")?.AsBool("tokenizer.ggml.add_bos_token") ?? false,
            ["add_eos_token"] = file.Find("tokenizer.ggml.add_eos_token")?.AsBool("tokenizer.ggml.add_eos_token") ?? false,
            ["added_tokens_decoder"] = decoder,
        };
        if (Token("tokenizer.ggml.bos_token_id") is { } bos) config["bos_token"] = bos;
        if (Token("tokenizer.ggml.eos_token_id") is { } eos) config["eos_token"] = eos;
        if (Token("tokenizer.ggml.padding_token_id") is { } pad) config["pad_token"] = pad;
        if (file.Find("tokenizer.chat_template") is { } template) config["chat_template"] = template.AsString("tokenizer.chat_template");
        var options = new JsonSerializerOptions { WriteIndented = true };
        AtomicFile.WriteAllText(Path.Combine(folder, "tokenizer.json"), tokenizerJson.ToJsonString(options));
        AtomicFile.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), config.ToJsonString(options));
    }

    // A "llama" vocabulary back to the tokenizer.model it came from: the pieces with scores and types, byte fallback when
    // the vocabulary has byte pieces, and the whitespace rules llama.cpp applies (▁ escaping, the space prefix, nothing removed).
    private static void WriteSentencePieceFiles(GgufFile file, string folder)
    {
        var tokens = file.Require("tokenizer.ggml.tokens").AsStringArray("tokenizer.ggml.tokens");
        var scores = file.Require("tokenizer.ggml.scores").AsFloatArray("tokenizer.ggml.scores");
        var types = file.Find("tokenizer.ggml.token_type")?.AsInt32Array("tokenizer.ggml.token_type") ?? Enumerable.Repeat(Normal, tokens.Length).ToArray();
        if (scores.Length != tokens.Length || types.Length != tokens.Length)
            throw new InvalidDataException($"GGUF file '{file.Path}' has {tokens.Length} tokens, {scores.Length} scores and {types.Length} token types.");
        if (types.FirstOrDefault(t => t is < Normal or > Byte) is var bad && bad != 0)
            throw new InvalidDataException($"GGUF file '{file.Path}' has token type {bad}; types are {Normal}-{Byte}.");
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int id = 0; id < tokens.Length; id++)
        {
            if (tokens[id].Length == 0) throw new InvalidDataException($"GGUF file '{file.Path}' has an empty token (id {id}).");
            if (!seen.Add(tokens[id])) throw new InvalidDataException($"GGUF file '{file.Path}' has token '{tokens[id]}' twice (id {id}).");
        }
        int Id(string key, int fallback) => file.FindTokenId(key, tokens.Length) ?? fallback;
        int unk = Id("tokenizer.ggml.unknown_token_id", 0), bos = Id("tokenizer.ggml.bos_token_id", 1), eos = Id("tokenizer.ggml.eos_token_id", 2);
        int pad = Id("tokenizer.ggml.padding_token_id", -1);
        bool addSpacePrefix = file.Find("tokenizer.ggml.add_space_prefix")?.AsBool("tokenizer.ggml.add_space_prefix") ?? true;
        // Microsoft.ML.Tokenizers finds a byte's piece by its offset from <0x00>: byte pieces must be all 256, in order.
        int firstByte = Array.IndexOf(types, Byte);
        if (firstByte >= 0 && (firstByte + 256 > tokens.Length || Enumerable.Range(0, 256).Any(b => types[firstByte + b] != Byte || tokens[firstByte + b] != $"<0x{b:X2}>")
            || types.Count(t => t == Byte) != 256))
            throw new NotSupportedException($"GGUF file '{file.Path}' has byte tokens that are not <0x00>…<0xFF> in a row; import needs them so.");
        var pieces = tokens.Select((t, i) => new SentencePiece(t, scores[i], (SentencePieceType)types[i])).ToList();
        var sentencePiece = new SentencePieceModel(pieces, IsBpe: true, ByteFallback: types.Contains(Byte), AddDummyPrefix: addSpacePrefix,
            RemoveExtraWhitespaces: false, EscapeWhitespaces: true, TreatWhitespaceAsSuffix: false, HasCharsMap: false, unk, bos, eos, pad);
        AtomicFile.Write(Path.Combine(folder, "tokenizer.model"), stream => stream.Write(sentencePiece.ToBytes()));
        var config = new JsonObject
        {
            ["tokenizer_class"] = "LlamaTokenizer",
            ["add_bos_token"] = file.Find("tokenizer.ggml.add_bos_token")?.AsBool("tokenizer.ggml.add_bos_token") ?? true,
            ["add_eos_token"] = file.Find("tokenizer.ggml.add_eos_token")?.AsBool("tokenizer.ggml.add_eos_token") ?? false,
            ["bos_token"] = tokens[bos], ["eos_token"] = tokens[eos], ["unk_token"] = tokens[unk],
        };
        if (pad >= 0) config["pad_token"] = tokens[pad];
        if (file.Find("tokenizer.chat_template") is { } template) config["chat_template"] = template.AsString("tokenizer.chat_template");
        AtomicFile.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }
}
