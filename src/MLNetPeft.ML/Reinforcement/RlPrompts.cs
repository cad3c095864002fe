using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.ML.FineTuning;

namespace MLNetPeft.ML.Reinforcement;

/// <summary>
/// The prompts of an RL estimator's view and the text columns its rewards read, by prompt. A prompt that occurs in
/// several rows must carry the same reward columns in each (a reward sees the prompt, not the row).
/// </summary>
internal sealed record RlPrompts(IReadOnlyList<string> Prompts, IReadOnlyDictionary<string, IReadOnlyDictionary<string, string>> ColumnsByPrompt)
{
    /// <summary>The prompt column and every reward column must exist and hold text; the error names the column.</summary>
    public static void Check(DataViewSchema schema, string promptColumn, IEnumerable<RlReward> rewards, IExceptionContext ectx)
    {
        TextColumns.Require(schema, promptColumn, "prompt", ectx);
        foreach (var column in rewards.SelectMany(r => r.Columns).Distinct()) TextColumns.Require(schema, column, "reward input", ectx);
    }

    /// <inheritdoc cref="Check(DataViewSchema, string, IEnumerable{RlReward}, IExceptionContext)"/>
    public static void Check(SchemaShape shape, string promptColumn, IEnumerable<RlReward> rewards, IExceptionContext ectx)
    {
        TextColumns.Require(shape, promptColumn, "prompt", ectx);
        foreach (var column in rewards.SelectMany(r => r.Columns).Distinct()) TextColumns.Require(shape, column, "reward input", ectx);
    }

    /// <summary>Reads the view; rows with an empty prompt are skipped and counted, or fail the fit, as <paramref name="emptyRows"/> says.</summary>
    public static RlPrompts Read(IDataView data, string promptColumn, IEnumerable<RlReward> rewards, BadRowHandling emptyRows, IChannel ch)
    {
        var columns = rewards.SelectMany(r => r.Columns).Distinct().ToList();
        var prompts = data.GetColumn<string>(promptColumn).ToList();
        if (prompts.Count == 0) throw new ArgumentException("The training data view has no rows.", nameof(data));
        var values = columns.ToDictionary(c => c, c => data.GetColumn<string>(c).ToList());
        var kept = new List<string>(prompts.Count);
        var byPrompt = new Dictionary<string, IReadOnlyDictionary<string, string>>(StringComparer.Ordinal);
        var firstRow = new Dictionary<string, int>(StringComparer.Ordinal);
        int empty = 0;
        for (int row = 0; row < prompts.Count; row++)
        {
            var prompt = prompts[row];
            if (string.IsNullOrWhiteSpace(prompt))
            {
                if (emptyRows == BadRowHandling.Fail)
                    throw new InvalidOperationException($"Row {row} of the training data has an empty {promptColumn}; clean the data or set EmptyRows to SkipOrTruncate.");
                empty++;
                continue;
            }
            var rowColumns = columns.ToDictionary(c => c, c => values[c][row] ?? "", StringComparer.Ordinal);
            if (byPrompt.TryGetValue(prompt, out var earlier))
            {
                if (columns.FirstOrDefault(c => earlier[c] != rowColumns[c]) is { } differing)
                    throw new InvalidOperationException($"Rows {firstRow[prompt]} and {row} have the same {promptColumn} but different {differing} " +
                        $"(\"{earlier[differing]}\" and \"{rowColumns[differing]}\"); a reward sees the prompt, so each prompt must carry one value.");
            }
            else
            {
                byPrompt[prompt] = rowColumns;
                firstRow[prompt] = row;
            }
            kept.Add(prompt);
        }
        if (empty > 0) ch.Warning($"{empty} training row(s) with an empty {promptColumn} were skipped.");
        if (kept.Count == 0) throw new ArgumentException($"No training row has a {promptColumn} (empty: {empty}).", nameof(data));
        return new RlPrompts(kept, byPrompt);
    }
}
