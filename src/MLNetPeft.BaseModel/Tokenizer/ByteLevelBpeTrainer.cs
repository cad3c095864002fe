using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using MLNetPeft.Checkpoints;
using MLNetPeft.Tokenization;

namespace MLNetPeft.BaseModel.Tokenizer;

/// <summary>
/// Learns a byte-level BPE vocabulary (Sennrich et al. 2016; GPT-2's byte-level variant) from a corpus and writes
/// it as GPT-2-style <c>vocab.json</c> + <c>merges.txt</c>, which <see cref="TextTokenizer.FromPretrained"/> loads
/// through Microsoft.ML.Tokenizers. This class only learns the merges; all encoding is Microsoft.ML.Tokenizers'.
/// </summary>
public static class ByteLevelBpeTrainer
{
    public const string EndOfText = "<|endoftext|>";

    /// <summary>
    /// Learns merges until the vocabulary (256 byte symbols + merges + <c>&lt;|endoftext|&gt;</c>) has
    /// <paramref name="vocabSize"/> entries or no pair occurs twice. Words come from GPT-2's pre-tokenization
    /// pattern; ties between equally frequent pairs go to the ordinally smaller pair, so the result is deterministic.
    /// </summary>
    public static (IReadOnlyList<string> Vocabulary, IReadOnlyList<(string Left, string Right)> Merges) Train(IEnumerable<string> documents, int vocabSize)
    {
        if (vocabSize < 257) throw new ArgumentOutOfRangeException(nameof(vocabSize), vocabSize, "must hold the 256 byte symbols and <|endoftext|>");
        var byteSymbols = ByteSymbols();
        var pattern = new Regex(TextTokenizer.Gpt2Pattern, RegexOptions.Compiled);
        var wordCounts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var doc in documents)
        {
            foreach (Match m in pattern.Matches(doc))
                wordCounts[m.Value] = wordCounts.GetValueOrDefault(m.Value) + 1;
        }
        var words = wordCounts.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => (Symbols: Encoding.UTF8.GetBytes(kv.Key).Select(b => byteSymbols[b]).ToList(), Count: kv.Value)).ToList();

        var vocabulary = new List<string>(byteSymbols);
        var known = new HashSet<string>(vocabulary, StringComparer.Ordinal);
        var merges = new List<(string, string)>();
        while (vocabulary.Count < vocabSize - 1)
        {
            var pairs = new Dictionary<(string, string), long>();
            foreach (var (symbols, count) in words)
                for (int i = 0; i + 1 < symbols.Count; i++)
                    pairs[(symbols[i], symbols[i + 1])] = pairs.GetValueOrDefault((symbols[i], symbols[i + 1])) + count;
            if (pairs.Count == 0) break;
            var best = pairs.OrderByDescending(kv => kv.Value)
                .ThenBy(kv => kv.Key.Item1, StringComparer.Ordinal).ThenBy(kv => kv.Key.Item2, StringComparer.Ordinal).First();
            if (best.Value < 2) break;
            var (left, right) = best.Key;
            string merged = left + right;
            merges.Add((left, right));
            if (known.Add(merged)) vocabulary.Add(merged);
            foreach (var (symbols, _) in words)
            {
                for (int i = 0; i + 1 < symbols.Count; i++)
                {
                    if (symbols[i] == left && symbols[i + 1] == right)
                    {
                        symbols[i] = merged;
                        symbols.RemoveAt(i + 1);
                    }
                }
            }
        }
        vocabulary.Add(EndOfText);
        return (vocabulary, merges);
    }

    /// <summary>Writes vocab.json, merges.txt and a tokenizer_config.json naming &lt;|endoftext|&gt; as bos, eos and pad.</summary>
    public static void Save(string folder, IReadOnlyList<string> vocabulary, IReadOnlyList<(string Left, string Right)> merges)
    {
        Directory.CreateDirectory(folder);
        var vocab = new JsonObject();
        for (int i = 0; i < vocabulary.Count; i++) vocab[vocabulary[i]] = i;
        AtomicFile.WriteAllText(Path.Combine(folder, "vocab.json"), vocab.ToJsonString());
        AtomicFile.WriteAllText(Path.Combine(folder, "merges.txt"), "#version: 0.2\n" + string.Concat(merges.Select(m => $"{m.Left} {m.Right}\n")));
        int eos = vocabulary.Count - 1;
        AtomicFile.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), new JsonObject
        {
            ["tokenizer_class"] = "GPT2Tokenizer",
            ["bos_token"] = EndOfText, ["eos_token"] = EndOfText, ["pad_token"] = EndOfText, ["add_bos_token"] = false,
            ["added_tokens_decoder"] = new JsonObject { [eos.ToString(System.Globalization.CultureInfo.InvariantCulture)] = new JsonObject { ["content"] = EndOfText, ["special"] = true } },
        }.ToJsonString(new() { WriteIndented = true }));
    }

    /// <summary>GPT-2's reversible map from bytes to printable characters (space is 'Ġ', newline 'Ċ').</summary>
    public static string[] ByteSymbols()
    {
        var printable = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1)).Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToHashSet();
        var symbols = new string[256];
        int next = 0;
        for (int b = 0; b < 256; b++)
            symbols[b] = ((char)(printable.Contains(b) ? b : 256 + next++)).ToString();
        return symbols;
    }
}
