using System.Text;
using System.Text.Json;

namespace MLNetPeft.ML.Preferences;

/// <summary>One preference row as the reward-model and DPO estimators read it by default (columns Prompt, Chosen, Rejected).</summary>
public sealed class PreferenceRow
{
    public string Prompt { get; set; } = "";
    public string Chosen { get; set; } = "";
    public string Rejected { get; set; } = "";
}

/// <summary>Readers of preference data files into <see cref="PreferenceRow"/>s (load them with <c>mlContext.Data.LoadFromEnumerable</c>).</summary>
public static class PreferenceFiles
{
    /// <summary>The largest file read (the demo sets are a few MB).</summary>
    public const long MaxFileBytes = 1L << 30;

    /// <summary>
    /// A ShareGPT-style preference file (LLaMA-Factory's DPO format): a JSON array of objects with <c>conversations</c>
    /// (turns with <c>from</c> "human"/"gpt"/"system" and <c>value</c>), <c>chosen</c> and <c>rejected</c> (one turn each).
    /// The prompt renders the conversation as "Human: …\n\nAssistant: …" turns ending with "\n\nAssistant:", the layout
    /// of Anthropic's HH-RLHF; each response gets a leading space.
    /// </summary>
    /// <exception cref="InvalidDataException">The file is not of this form; the message names the file and the entry.</exception>
    public static IReadOnlyList<PreferenceRow> ReadShareGpt(string path)
    {
        var info = new FileInfo(path);
        if (!info.Exists) throw new FileNotFoundException($"Preference file '{path}' does not exist.", path);
        if (info.Length > MaxFileBytes) throw new InvalidDataException($"Preference file '{path}' is {info.Length:N0} bytes; at most {MaxFileBytes:N0} are read.");
        JsonDocument document;
        try { document = JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw new InvalidDataException($"Preference file '{path}' is not valid JSON: {e.Message}", e); }
        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Array) throw new InvalidDataException($"Preference file '{path}' is not a JSON array of entries.");
            var rows = new List<PreferenceRow>();
            int index = 0;
            foreach (var entry in document.RootElement.EnumerateArray())
            {
                string Fail(string what) => throw new InvalidDataException($"Preference file '{path}', entry {index}: {what}.");
                if (entry.ValueKind != JsonValueKind.Object) Fail("not an object");
                if (!entry.TryGetProperty("conversations", out var turns) || turns.ValueKind != JsonValueKind.Array || turns.GetArrayLength() == 0)
                    Fail("'conversations' is missing or not a non-empty array");
                var prompt = new StringBuilder();
                foreach (var turn in turns.EnumerateArray())
                {
                    var (from, value) = Turn(turn, "a turn of 'conversations'", Fail);
                    string speaker = from switch { "human" or "user" => "Human", "gpt" or "assistant" => "Assistant", "system" => "System", _ => Fail($"unknown speaker '{from}'") };
                    if (prompt.Length > 0) prompt.Append("\n\n");
                    prompt.Append(speaker).Append(": ").Append(value);
                }
                prompt.Append("\n\nAssistant:");
                string Response(string name) =>
                    entry.TryGetProperty(name, out var side) ? " " + Turn(side, $"'{name}'", Fail).Value : Fail($"'{name}' is missing");
                rows.Add(new PreferenceRow { Prompt = prompt.ToString(), Chosen = Response("chosen"), Rejected = Response("rejected") });
                index++;
            }
            return rows;
        }
    }

    private static (string From, string Value) Turn(JsonElement turn, string what, Func<string, string> fail)
    {
        if (turn.ValueKind != JsonValueKind.Object || !turn.TryGetProperty("from", out var from) || from.ValueKind != JsonValueKind.String ||
            !turn.TryGetProperty("value", out var value) || value.ValueKind != JsonValueKind.String)
            fail($"{what} needs string fields 'from' and 'value'");
        return (turn.GetProperty("from").GetString()!, turn.GetProperty("value").GetString()!);
    }
}
