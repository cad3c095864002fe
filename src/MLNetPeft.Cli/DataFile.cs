using System.Text;
using System.Text.Json;

namespace MLNetPeft.Cli;

/// <summary>
/// Rows of a JSONL, CSV or TSV file (by extension) as column name → text, so each command can take the columns it
/// needs by name. CSV follows RFC 4180 (quoted fields, doubled quotes, line breaks inside quotes); TSV has no quoting.
/// Errors name the file and line.
/// </summary>
internal sealed class DataFile
{
    /// <summary>Rows read at most (a bound before anything large is kept in memory).</summary>
    public const int MaxRows = 10_000_000;

    private DataFile(string path, IReadOnlyList<string> columns, List<Dictionary<string, string>> rows)
    {
        Path = path;
        Columns = columns;
        Rows = rows;
    }

    public string Path { get; }
    public IReadOnlyList<string> Columns { get; }
    public IReadOnlyList<Dictionary<string, string>> Rows { get; }

    public static DataFile Read(string path)
    {
        if (!File.Exists(path)) throw new CliException($"The data file '{path}' does not exist.");
        return System.IO.Path.GetExtension(path).ToLowerInvariant() switch
        {
            ".jsonl" or ".json" => ReadJsonLines(path),
            ".csv" => ReadDelimited(path, ','),
            ".tsv" or ".tab" => ReadDelimited(path, '\t'),
            var other => throw new CliException($"The data file '{path}' has extension '{other}'; use .jsonl, .csv or .tsv."),
        };
    }

    /// <summary>The text of <paramref name="column"/> in every row; a missing column is named with the ones there are.</summary>
    public string[] Column(string column, string option)
    {
        if (!Columns.Contains(column))
            throw new CliException($"The data file '{Path}' has no column '{column}' ({option}); its columns are: {string.Join(", ", Columns)}.");
        return Rows.Select(r => r.TryGetValue(column, out var v) ? v : "").ToArray();
    }

    private static DataFile ReadJsonLines(string path)
    {
        var rows = new List<Dictionary<string, string>>();
        var columns = new List<string>();
        int line = 0;
        foreach (var text in File.ReadLines(path))
        {
            line++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            if (rows.Count == MaxRows) throw new CliException($"'{path}' has more than {MaxRows} rows.");
            JsonDocument document;
            try { document = JsonDocument.Parse(text); }
            catch (JsonException e) { throw new CliException($"'{path}' line {line} is not valid JSON: {e.Message}"); }
            using (document)
            {
                if (document.RootElement.ValueKind != JsonValueKind.Object) throw new CliException($"'{path}' line {line} is not a JSON object.");
                var row = new Dictionary<string, string>();
                foreach (var property in document.RootElement.EnumerateObject())
                {
                    row[property.Name] = property.Value.ValueKind switch
                    {
                        JsonValueKind.String => property.Value.GetString()!,
                        JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False => property.Value.GetRawText(),
                        JsonValueKind.Null => "",
                        _ => throw new CliException($"'{path}' line {line}: field '{property.Name}' must be a string, number or Boolean."),
                    };
                    if (!columns.Contains(property.Name)) columns.Add(property.Name);
                }
                rows.Add(row);
            }
        }
        if (rows.Count == 0) throw new CliException($"The data file '{path}' has no rows.");
        return new DataFile(path, columns, rows);
    }

    private static DataFile ReadDelimited(string path, char separator)
    {
        using var reader = new StreamReader(path, Encoding.UTF8);
        int line = 0;
        var header = ReadRecord(reader, separator, path, ref line) ?? throw new CliException($"The data file '{path}' is empty; it needs a header line.");
        if (header.Distinct().Count() != header.Count) throw new CliException($"'{path}': the header names a column twice.");
        var rows = new List<Dictionary<string, string>>();
        while (ReadRecord(reader, separator, path, ref line) is { } record)
        {
            if (record is [""]) continue;
            if (record.Count != header.Count) throw new CliException($"'{path}' line {line} has {record.Count} fields; the header has {header.Count}.");
            if (rows.Count == MaxRows) throw new CliException($"'{path}' has more than {MaxRows} rows.");
            rows.Add(header.Zip(record).ToDictionary(x => x.First, x => x.Second));
        }
        if (rows.Count == 0) throw new CliException($"The data file '{path}' has no rows under its header.");
        return new DataFile(path, header, rows);
    }

    /// <summary>One record; null at the end of the file. TSV fields are taken as they are.</summary>
    private static List<string>? ReadRecord(StreamReader reader, char separator, string path, ref int line)
    {
        if (reader.Peek() < 0) return null;
        var fields = new List<string>();
        var field = new StringBuilder();
        bool quoted = false, quotable = separator == ',';
        line++;
        int startLine = line;
        while (true)
        {
            int c = reader.Read();
            if (c < 0)
            {
                if (quoted) throw new CliException($"'{path}' line {startLine}: a quoted field is not closed.");
                break;
            }
            if (quoted)
            {
                if (c == '"')
                {
                    if (reader.Peek() == '"') { reader.Read(); field.Append('"'); }
                    else quoted = false;
                }
                else
                {
                    if (c == '\n') line++;
                    field.Append((char)c);
                }
                continue;
            }
            if (c == '"' && quotable && field.Length == 0) { quoted = true; continue; }
            if (c == separator) { fields.Add(field.ToString()); field.Clear(); continue; }
            if (c == '\r' && reader.Peek() == '\n') continue;
            if (c == '\n') break;
            field.Append((char)c);
        }
        fields.Add(field.ToString());
        return fields;
    }
}

/// <summary>A user error: printed as one line, exit code 1.</summary>
internal sealed class CliException(string message) : Exception(message);
