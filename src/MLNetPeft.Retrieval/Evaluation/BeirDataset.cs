using System.Text.Json;

namespace MLNetPeft.Retrieval.Evaluation;

/// <summary>A document of a retrieval corpus.</summary>
public sealed record CorpusDocument(string Id, string Title, string Text)
{
    /// <summary>Title and text as BEIR's dense and lexical baselines index them: "title text".</summary>
    public string FullText => Title.Length == 0 ? Text : Title + " " + Text;
}

/// <summary>
/// A retrieval dataset in BEIR's format (also MTEB's): <c>corpus.jsonl</c> ({"_id", "title", "text"}),
/// <c>queries.jsonl</c> ({"_id", "text"}) and <c>qrels/&lt;split&gt;.tsv</c> (query-id, corpus-id, score, with a header).
/// </summary>
public sealed class BeirDataset
{
    /// <summary>Files larger than this are not read (a corpus this size would not fit the in-memory tools anyway).</summary>
    public const long MaxFileBytes = 4L << 30;

    private BeirDataset(IReadOnlyList<CorpusDocument> corpus, IReadOnlyDictionary<string, string> queries)
    {
        Corpus = corpus;
        Queries = queries;
    }

    public IReadOnlyList<CorpusDocument> Corpus { get; }
    public IReadOnlyDictionary<string, string> Queries { get; }

    /// <summary>Reads corpus.jsonl and queries.jsonl of <paramref name="folder"/>.</summary>
    /// <exception cref="InvalidDataException">A line is not the JSON object BEIR writes, names the file and line.</exception>
    public static BeirDataset Load(string folder)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        var corpus = new List<CorpusDocument>();
        var ids = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (line, element) in JsonLines(Path.Combine(folder, "corpus.jsonl")))
        {
            var id = Text(element, "_id", "corpus.jsonl", line);
            if (!ids.Add(id)) throw new InvalidDataException($"corpus.jsonl line {line}: document id '{id}' occurs twice.");
            corpus.Add(new CorpusDocument(id, element.TryGetProperty("title", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "", Text(element, "text", "corpus.jsonl", line)));
        }
        var queries = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (line, element) in JsonLines(Path.Combine(folder, "queries.jsonl")))
            queries[Text(element, "_id", "queries.jsonl", line)] = Text(element, "text", "queries.jsonl", line);
        return new BeirDataset(corpus, queries);
    }

    /// <summary>The relevance judgements of a split (qrels/&lt;split&gt;.tsv): query id → (document id → grade).</summary>
    public static IReadOnlyDictionary<string, IReadOnlyDictionary<string, int>> LoadJudgements(string folder, string split)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(split);
        var path = Path.Combine(folder, "qrels", split + ".tsv");
        CheckSize(path);
        var result = new Dictionary<string, Dictionary<string, int>>(StringComparer.Ordinal);
        int number = 0;
        foreach (var line in File.ReadLines(path))
        {
            number++;
            if (line.Length == 0 || (number == 1 && line.StartsWith("query-id", StringComparison.Ordinal))) continue;
            var parts = line.Split('\t');
            if (parts.Length != 3 || !int.TryParse(parts[2], System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var grade))
                throw new InvalidDataException($"{path} line {number}: expected query-id<TAB>corpus-id<TAB>integer score.");
            if (!result.TryGetValue(parts[0], out var grades)) result[parts[0]] = grades = new Dictionary<string, int>(StringComparer.Ordinal);
            grades[parts[1]] = grade;
        }
        return result.ToDictionary(kv => kv.Key, kv => (IReadOnlyDictionary<string, int>)kv.Value, StringComparer.Ordinal);
    }

    private static IEnumerable<(int Line, JsonElement Element)> JsonLines(string path)
    {
        CheckSize(path);
        int number = 0;
        foreach (var line in File.ReadLines(path))
        {
            number++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            JsonElement element;
            try
            {
                using var document = JsonDocument.Parse(line);
                element = document.RootElement.Clone();
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"{Path.GetFileName(path)} line {number}: not JSON ({e.Message}).", e);
            }
            if (element.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{Path.GetFileName(path)} line {number}: not a JSON object.");
            yield return (number, element);
        }
    }

    private static string Text(JsonElement element, string name, string file, int line) =>
        element.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()!
            : throw new InvalidDataException($"{file} line {line}: no string \"{name}\".");

    private static void CheckSize(string path)
    {
        var info = new FileInfo(path);
        if (!info.Exists) throw new FileNotFoundException($"The BEIR file '{path}' does not exist.", path);
        if (info.Length > MaxFileBytes) throw new InvalidDataException($"'{path}' is {info.Length:N0} bytes; at most {MaxFileBytes:N0} are read.");
    }
}
