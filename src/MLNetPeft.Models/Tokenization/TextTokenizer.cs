using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace MLNetPeft.Tokenization;

/// <summary>
/// A Microsoft.ML.Tokenizers tokenizer plus what a model needs around it: the ids of its bos/eos/pad
/// tokens, whether a bos token starts each sequence, its added (special) tokens, and its chat template.
/// Built from the tokenizer files of an HF checkpoint folder or from a tiktoken data package; all encoding
/// is done by Microsoft.ML.Tokenizers.
/// </summary>
public sealed class TextTokenizer
{
    /// <summary>GPT-2's pre-tokenization pattern (also used when a byte-level tokenizer.json names no other).</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private readonly Dictionary<string, int> _specialTokens;
    private readonly HashSet<int> _specialIds;
    private readonly bool _addPrefixSpace;

    private TextTokenizer(Tokenizer inner, string kind, Dictionary<string, int> specialTokens, TokenSettings settings, bool addPrefixSpace,
        ByteLevelBpeModel? byteLevelBpe = null, SentencePieceModel? sentencePiece = null)
    {
        ByteLevelBpe = byteLevelBpe;
        SentencePiece = sentencePiece;
        ChatTemplateText = settings.ChatTemplate;
        Inner = inner;
        Kind = kind;
        _specialTokens = specialTokens;
        _addPrefixSpace = addPrefixSpace;
        BosToken = settings.Bos;
        EosToken = settings.Eos;
        PadToken = settings.Pad;
        BosId = settings.BosId ?? TokenToId(settings.Bos);
        EosId = settings.EosId ?? TokenToId(settings.Eos);
        PadId = settings.PadId ?? TokenToId(settings.Pad);
        AddBosToken = settings.AddBos && BosId is not null;
        AddEosToken = settings.AddEos && EosId is not null;
        _specialIds = [.. specialTokens.Values];
        foreach (var id in new[] { BosId, EosId, PadId }) if (id is { } i) _specialIds.Add(i);
        ChatTemplate = new ChatTemplate(ChatTemplate.Detect(settings.ChatTemplate), BosToken ?? "", EosToken ?? "");
    }

    /// <summary>The Microsoft.ML.Tokenizers tokenizer that does the encoding.</summary>
    public Tokenizer Inner { get; }
    /// <summary>"bpe", "wordpiece", "sentencepiece" or "tiktoken".</summary>
    public string Kind { get; }
    public string? BosToken { get; }
    public string? EosToken { get; }
    public string? PadToken { get; }
    public int? BosId { get; }
    public int? EosId { get; }
    public int? PadId { get; }
    /// <summary>Whether <see cref="Encode"/> starts sequences with the bos token (tokenizer_config's add_bos_token).</summary>
    public bool AddBosToken { get; }
    public bool AddEosToken { get; }
    public IReadOnlyDictionary<string, int> SpecialTokens => _specialTokens;
    public ChatTemplate ChatTemplate { get; }
    /// <summary>The checkpoint's own chat template (Jinja text of tokenizer_config.json), when it has one.</summary>
    public string? ChatTemplateText { get; }

    /// <summary>
    /// The vocabulary, merges and pre-tokenization pattern of a byte-level BPE tokenizer (GPT-2, Llama 3, Qwen2, SmolLM),
    /// as they were read: what other formats (GGUF) need to rebuild the same tokenizer. Null for other kinds.
    /// </summary>
    public ByteLevelBpeModel? ByteLevelBpe { get; }

    /// <summary>The pieces, scores and rules of a SentencePiece tokenizer (tokenizer.model), as read. Null for other kinds.</summary>
    public SentencePieceModel? SentencePiece { get; }

    /// <summary>Token ids of <paramref name="text"/>; with <paramref name="addSpecialTokens"/> the model's bos/eos (or [CLS]/[SEP]) are added.</summary>
    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (Inner is BertTokenizer bert) return bert.EncodeToIds(text, addSpecialTokens, true, true);
        if (_addPrefixSpace && text.Length > 0 && !char.IsWhiteSpace(text[0])) text = " " + text;
        var ids = new List<int>(text.Length / 3 + 2);
        if (addSpecialTokens && AddBosToken) ids.Add(BosId!.Value);
        ids.AddRange(Inner.EncodeToIds(text));
        if (addSpecialTokens && AddEosToken) ids.Add(EosId!.Value);
        return ids;
    }

    /// <summary>Text of <paramref name="ids"/>, by default without special tokens.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var kept = skipSpecialTokens ? ids.Where(id => !_specialIds.Contains(id)) : ids;
        var text = Inner.Decode(kept);
        return _addPrefixSpace && text.StartsWith(' ') ? text[1..] : text;
    }

    /// <summary>The id of a single token string, or null when the vocabulary has no such token.</summary>
    public int? TokenToId(string? token)
    {
        if (token is null) return null;
        if (_specialTokens.TryGetValue(token, out var id)) return id;
        IReadOnlyDictionary<string, int>? vocab = Inner switch
        {
            BpeTokenizer b => b.Vocabulary,
            SentencePieceTokenizer s => s.Vocabulary,
            _ => null,
        };
        if (vocab is not null) return vocab.TryGetValue(token, out id) ? id : null;
        var ids = Inner.EncodeToIds(token, considerPreTokenization: false, considerNormalization: false);
        return ids.Count == 1 ? ids[0] : null;
    }

    /// <summary>Builds the tokenizer of an HF checkpoint folder.</summary>
    /// <remarks>
    /// Uses, in this order: <c>tokenizer.model</c> (SentencePiece), <c>vocab.txt</c> (WordPiece), <c>vocab.json</c> +
    /// <c>merges.txt</c> (byte-level BPE), or the BPE/WordPiece model inside <c>tokenizer.json</c>. Special tokens come from
    /// tokenizer_config.json, special_tokens_map.json, tokenizer.json's added tokens and, for ids, config.json.
    /// </remarks>
    /// <exception cref="InvalidDataException">A tokenizer file is malformed, too large or inconsistent (the message names it).</exception>
    public static TextTokenizer FromPretrained(string folder)
    {
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"Tokenizer folder '{folder}' does not exist.");
        foreach (var name in Architectures.PretrainedModule.CompanionFiles.Append("config.json"))
        {
            var path = Path.Combine(folder, name);
            if (File.Exists(path) && new FileInfo(path).Length > MaxFileBytes)
                throw new InvalidDataException($"Tokenizer file '{path}' is {new FileInfo(path).Length:N0} bytes, more than the {MaxFileBytes:N0} a tokenizer file may have.");
        }
        try
        {
            return Read(folder);
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or ArgumentException or KeyNotFoundException or IndexOutOfRangeException
            or OverflowException or JsonException or NullReferenceException)
        {
            // Whatever a malformed file makes Microsoft.ML.Tokenizers or our JSON reading throw is reported as such, naming the folder.
            throw new InvalidDataException($"The tokenizer files in '{Path.GetFullPath(folder)}' are malformed: {e.Message}", e);
        }
    }

    /// <summary>How long a pre-tokenization regex may run on one text before encoding fails.</summary>
    public static readonly TimeSpan PatternTimeout = TimeSpan.FromSeconds(2);

    /// <summary>The largest tokenizer file read (the largest real vocabularies are a few tens of MB).</summary>
    public const long MaxFileBytes = 256L << 20;

    private static TextTokenizer Read(string folder)
    {
        string F(string name) => Path.Combine(folder, name);
        var tokenizerConfig = ReadJson(F("tokenizer_config.json"));
        var specialMap = ReadJson(F("special_tokens_map.json"));
        var tokenizerJson = ReadJson(F("tokenizer.json"));
        var modelConfig = ReadJson(F("config.json"));
        var settings = TokenSettings.Read(tokenizerConfig, specialMap, modelConfig);
        var added = AddedTokens(tokenizerConfig, tokenizerJson, ReadJson(F("added_tokens.json")));

        if (File.Exists(F("tokenizer.model")))
        {
            var bytes = File.ReadAllBytes(F("tokenizer.model"));
            var pieces = SentencePieceModel.Read(bytes, F("tokenizer.model"));
            using var stream = new MemoryStream(bytes, writable: false);
            var sp = LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false, specialTokens: added.Count > 0 ? added : null);
            return new TextTokenizer(sp, "sentencepiece", added, settings with { AddBos = settings.AddBosExplicit ?? true }, false, sentencePiece: pieces);
        }
        if (File.Exists(F("vocab.txt")))
        {
            using var stream = File.OpenRead(F("vocab.txt"));
            return new TextTokenizer(CreateWordPiece(stream, tokenizerConfig), "wordpiece", added, settings, false);
        }
        var preTokenizer = tokenizerJson?["pre_tokenizer"];
        bool addPrefixSpace = FindByteLevel(preTokenizer)?["add_prefix_space"]?.GetValue<bool>() ?? tokenizerConfig?["add_prefix_space"]?.GetValue<bool>() ?? false;
        if (File.Exists(F("vocab.json")) && File.Exists(F("merges.txt")))
        {
            var vocab = (ReadJson(F("vocab.json")) as JsonObject ?? throw Invalid(folder, "vocab.json is not an object"))
                .Select(kv => new KeyValuePair<string, int>(kv.Key, kv.Value!.GetValue<int>())).ToList();
            // merges.txt: one "left right" pair per line after an optional "#version" line.
            var merges = File.ReadAllLines(F("merges.txt")).Where((line, i) => line.Length > 0 && !(i == 0 && line.StartsWith("#version", StringComparison.Ordinal))).ToList();
            return CreateByteLevelBpe(vocab, merges, preTokenizer, added, settings, addPrefixSpace);
        }
        if (tokenizerJson?["model"] is JsonObject model)
        {
            switch (model["type"]?.GetValue<string>())
            {
                case "BPE":
                    var vocab = (model["vocab"] as JsonObject ?? throw Invalid(folder, "tokenizer.json has a BPE model without 'vocab'"))
                        .Select(kv => new KeyValuePair<string, int>(kv.Key, kv.Value!.GetValue<int>()));
                    var merges = (model["merges"] as JsonArray ?? throw Invalid(folder, "tokenizer.json has a BPE model without 'merges'"))
                        .Select(m => m is JsonArray pair ? $"{pair[0]!.GetValue<string>()} {pair[1]!.GetValue<string>()}" : m!.GetValue<string>());
                    return CreateByteLevelBpe(vocab.ToList(), merges.ToList(), preTokenizer, added, settings, addPrefixSpace);
                case "WordPiece":
                    var lines = (model["vocab"] as JsonObject ?? throw Invalid(folder, "tokenizer.json has a WordPiece model without 'vocab'"))
                        .OrderBy(kv => kv.Value!.GetValue<int>()).Select(kv => kv.Key);
                    using (var stream = new MemoryStream(System.Text.Encoding.UTF8.GetBytes(string.Join("\n", lines) + "\n")))
                        return new TextTokenizer(CreateWordPiece(stream, tokenizerConfig), "wordpiece", added, settings, false);
                case var other:
                    throw Invalid(folder, $"tokenizer.json has model type '{other}'; supported: BPE, WordPiece");
            }
        }
        throw new FileNotFoundException($"Folder '{Path.GetFullPath(folder)}' has no tokenizer files: expected tokenizer.model, vocab.txt, vocab.json + merges.txt, or tokenizer.json.");
    }

    /// <summary>
    /// A tiktoken tokenizer from Microsoft.ML.Tokenizers' data packages: "gpt2", "r50k_base", "cl100k_base" or
    /// "o200k_base" (the packages Microsoft.ML.Tokenizers.Data.* must be referenced; this library references
    /// Gpt2, Cl100kBase and O200kBase). <c>&lt;|endoftext|&gt;</c> serves as eos (and bos, as in GPT-2).
    /// </summary>
    public static TextTokenizer FromTiktoken(string encoding)
    {
        TiktokenTokenizer tk = encoding switch
        {
            "gpt2" => TiktokenTokenizer.CreateForModel("gpt2"),
            "r50k_base" or "p50k_base" or "cl100k_base" or "o200k_base" => TiktokenTokenizer.CreateForEncoding(encoding),
            _ => throw new ArgumentException($"Unknown tiktoken encoding '{encoding}'; use gpt2, r50k_base, cl100k_base or o200k_base.", nameof(encoding)),
        };
        var specials = tk.SpecialTokens?.ToDictionary(kv => kv.Key, kv => kv.Value) ?? [];
        const string endOfText = "<|endoftext|>";
        var settings = new TokenSettings(endOfText, endOfText, null, null, null, null, false, null, false, null);
        return new TextTokenizer(tk, "tiktoken", specials, settings, false);
    }

    private static TextTokenizer CreateByteLevelBpe(List<KeyValuePair<string, int>> vocab, List<string> merges, JsonNode? preTokenizer, Dictionary<string, int> added, TokenSettings settings, bool addPrefixSpace)
    {
        var pattern = FindSplitPattern(preTokenizer) ?? Gpt2Pattern;
        var options = new BpeOptions(vocab) { Merges = merges, ByteLevel = true };
        options.SpecialTokens = added.Count > 0 ? added : null;
        // The pattern may come from tokenizer.json, so it runs with a timeout (a pathological one throws RegexMatchTimeoutException).
        options.PreTokenizer = new RegexPreTokenizer(new Regex(pattern, RegexOptions.Compiled, PatternTimeout), options.SpecialTokens);
        var model = new ByteLevelBpeModel(vocab.ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal), merges, pattern, addPrefixSpace);
        return new TextTokenizer(BpeTokenizer.Create(options), "bpe", added, settings, addPrefixSpace, model);
    }

    private static BertTokenizer CreateWordPiece(Stream vocab, JsonNode? tokenizerConfig) =>
        BertTokenizer.Create(vocab, new BertOptions
        {
            LowerCaseBeforeTokenization = tokenizerConfig?["do_lower_case"]?.GetValue<bool>() ?? true,
            IndividuallyTokenizeCjk = tokenizerConfig?["tokenize_chinese_chars"]?.GetValue<bool>() ?? true,
            // HF strips accents when lower-casing unless strip_accents says otherwise.
            RemoveNonSpacingMarks = tokenizerConfig?["strip_accents"]?.GetValue<bool>() ?? (tokenizerConfig?["do_lower_case"]?.GetValue<bool>() ?? true),
        });

    // ByteLevel may stand alone or inside a Sequence of pre-tokenizers.
    private static JsonNode? FindByteLevel(JsonNode? pre) => pre?["type"]?.GetValue<string>() switch
    {
        "ByteLevel" => pre,
        "Sequence" => (pre["pretokenizers"] as JsonArray)?.Select(FindByteLevel).FirstOrDefault(n => n is not null),
        _ => null,
    };

    // A Split pre-tokenizer's regex (Qwen2, Llama 3); null means the GPT-2 pattern of plain ByteLevel.
    private static string? FindSplitPattern(JsonNode? pre) => pre?["type"]?.GetValue<string>() switch
    {
        "Split" => pre["pattern"]?["Regex"]?.GetValue<string>(),
        "Sequence" => (pre["pretokenizers"] as JsonArray)?.Select(FindSplitPattern).FirstOrDefault(p => p is not null),
        _ => null,
    };

    private static Dictionary<string, int> AddedTokens(JsonNode? tokenizerConfig, JsonNode? tokenizerJson, JsonNode? addedTokensJson)
    {
        var result = new Dictionary<string, int>(StringComparer.Ordinal);
        if (tokenizerJson?["added_tokens"] is JsonArray list)
            foreach (var t in list) result[t!["content"]!.GetValue<string>()] = t["id"]!.GetValue<int>();
        if (tokenizerConfig?["added_tokens_decoder"] is JsonObject decoder)
            foreach (var (id, t) in decoder) result[t!["content"]!.GetValue<string>()] = int.Parse(id, System.Globalization.CultureInfo.InvariantCulture);
        if (addedTokensJson is JsonObject map)
            foreach (var (token, id) in map) result[token] = id!.GetValue<int>();
        return result;
    }

    private static JsonNode? ReadJson(string path)
    {
        if (!File.Exists(path)) return null;
        try { return JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new InvalidDataException($"Tokenizer file '{path}' is not well-formed JSON: {e.Message}", e); }
    }

    private static InvalidDataException Invalid(string folder, string reason) => new($"Tokenizer in '{folder}': {reason}.");

    /// <summary>Special-token settings gathered from the checkpoint's JSON files.</summary>
    private sealed record TokenSettings(string? Bos, string? Eos, string? Pad, int? BosId, int? EosId, int? PadId,
        bool AddBos, bool? AddBosExplicit, bool AddEos, string? ChatTemplate)
    {
        public static TokenSettings Read(JsonNode? tokenizerConfig, JsonNode? specialMap, JsonNode? modelConfig)
        {
            string? Token(string key) => TokenText(tokenizerConfig?[key]) ?? TokenText(specialMap?[key]);
            int? Id(string key) => modelConfig?[key] is JsonValue v && v.TryGetValue<int>(out var i) ? i
                : modelConfig?[key] is JsonArray a && a.Count > 0 ? a[0]!.GetValue<int>() : null;
            var bos = Token("bos_token");
            var eos = Token("eos_token");
            var pad = Token("pad_token");
            bool? addBos = tokenizerConfig?["add_bos_token"]?.GetValue<bool>();
            bool addEos = tokenizerConfig?["add_eos_token"]?.GetValue<bool>() ?? false;
            var template = tokenizerConfig?["chat_template"] switch
            {
                JsonValue v => v.GetValue<string>(),
                JsonArray named => named.FirstOrDefault(t => t?["name"]?.GetValue<string>() == "default")?["template"]?.GetValue<string>(),
                _ => null,
            };
            return new TokenSettings(bos, eos, pad, bos is null ? Id("bos_token_id") : null, eos is null ? Id("eos_token_id") : null,
                pad is null ? Id("pad_token_id") : null, addBos ?? false, addBos, addEos, template);
        }

        // A token is written either as a string or as an AddedToken object {"content": ...}.
        private static string? TokenText(JsonNode? node) => node switch
        {
            JsonValue v when v.TryGetValue<string>(out var s) => s,
            JsonObject o => o["content"]?.GetValue<string>(),
            _ => null,
        };
    }
}

/// <summary>What defines a byte-level BPE tokenizer: token → id, the merges in priority order ("left right"), the pre-tokenization regex.</summary>
public sealed record ByteLevelBpeModel(IReadOnlyDictionary<string, int> Vocabulary, IReadOnlyList<string> Merges, string Pattern, bool AddPrefixSpace);
