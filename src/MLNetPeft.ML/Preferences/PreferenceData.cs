using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.Tokenization;
using MLNetPeft.Training;

namespace MLNetPeft.ML.Preferences;

/// <summary>The columns of a preference view: prompt, chosen and rejected response text, and an optional float margin.</summary>
internal sealed record PreferenceColumns(string Prompt, string Chosen, string Rejected, string? Margin = null)
{
    public IEnumerable<string> Texts => [Prompt, Chosen, Rejected];

    /// <summary>Each column must exist with the right type (text; the margin a float); the error names the column.</summary>
    public void Check(DataViewSchema schema, IExceptionContext ectx)
    {
        foreach (var name in Texts)
        {
            var column = schema.GetColumnOrNull(name) ?? throw ectx.ExceptSchemaMismatch(nameof(schema), "preference text", name);
            if (column.Type is not TextDataViewType) throw ectx.ExceptSchemaMismatch(nameof(schema), "preference text", name, "String", column.Type.ToString());
        }
        if (Margin is { } margin)
        {
            var column = schema.GetColumnOrNull(margin) ?? throw ectx.ExceptSchemaMismatch(nameof(schema), "margin", margin);
            if (column.Type != NumberDataViewType.Single) throw ectx.ExceptSchemaMismatch(nameof(schema), "margin", margin, "Single", column.Type.ToString());
        }
    }

    /// <summary>The same check on a schema shape (GetOutputSchema).</summary>
    public void Check(SchemaShape shape, IExceptionContext ectx)
    {
        foreach (var name in Texts)
        {
            if (!shape.TryFindColumn(name, out var column)) throw ectx.ExceptSchemaMismatch(nameof(shape), "preference text", name);
            if (column.Kind != SchemaShape.Column.VectorKind.Scalar || column.ItemType is not TextDataViewType)
                throw ectx.ExceptSchemaMismatch(nameof(shape), "preference text", name, "String", column.GetTypeString());
        }
        if (Margin is { } margin)
        {
            if (!shape.TryFindColumn(margin, out var column)) throw ectx.ExceptSchemaMismatch(nameof(shape), "margin", margin);
            if (column.Kind != SchemaShape.Column.VectorKind.Scalar || column.ItemType != NumberDataViewType.Single)
                throw ectx.ExceptSchemaMismatch(nameof(shape), "margin", margin, "Single", column.GetTypeString());
        }
    }
}

/// <summary>
/// Reads a preference view into token-id pairs, as the reward-model and DPO estimators train on them: the prompt
/// encoded with the tokenizer's special tokens, each response without them and followed by
/// the end-of-response id (eos for a causal LM, [SEP] for BERT). Rows with an empty text and rows whose
/// chosen equals their rejected response teach nothing: they are skipped and counted, or fail the fit.
/// </summary>
internal static class PreferenceData
{
    public static PreferencePairs Read(IDataView data, PreferenceColumns columns, TextTokenizer tokenizer, int endOfResponse, int maxLength,
        BadRowHandling emptyRows, BadRowHandling longRows, string what, IChannel ch)
    {
        var prompts = data.GetColumn<string>(columns.Prompt).ToList();
        var chosen = data.GetColumn<string>(columns.Chosen).ToList();
        var rejected = data.GetColumn<string>(columns.Rejected).ToList();
        var margins = columns.Margin is { } m ? data.GetColumn<float>(m).ToList() : null;
        if (prompts.Count == 0) throw new ArgumentException($"The {what} data view has no rows.", what + "Data");
        var examples = new List<(IReadOnlyList<int>, IReadOnlyList<int>, IReadOnlyList<int>, float)>(prompts.Count);
        int empty = 0, identical = 0, tooLong = 0;
        for (int row = 0; row < prompts.Count; row++)
        {
            string?[] texts = [prompts[row], chosen[row], rejected[row]];
            int blank = Array.FindIndex(texts, string.IsNullOrWhiteSpace);
            if (blank >= 0)
            {
                if (emptyRows == BadRowHandling.Fail)
                    throw new InvalidOperationException($"Row {row} of the {what} data has an empty {columns.Texts.ElementAt(blank)}; clean the data or set EmptyRows to SkipOrTruncate.");
                empty++;
                continue;
            }
            if (string.Equals(chosen[row], rejected[row], StringComparison.Ordinal))
            {
                if (emptyRows == BadRowHandling.Fail)
                    throw new InvalidOperationException($"Row {row} of the {what} data has the same {columns.Chosen} and {columns.Rejected}, which teaches no preference; " +
                        "remove it or set EmptyRows to SkipOrTruncate.");
                identical++;
                continue;
            }
            float margin = margins?[row] ?? 0;
            if (!float.IsFinite(margin)) throw new InvalidOperationException($"Row {row} of the {what} data has {columns.Margin} = {margin}; a margin must be a finite number.");
            var prompt = tokenizer.Encode(prompts[row]!);
            IReadOnlyList<int> Response(string text) => [.. tokenizer.Encode(text, addSpecialTokens: false), endOfResponse];
            var (c, r) = (Response(chosen[row]!), Response(rejected[row]!));
            if (prompt.Count + Math.Max(c.Count, r.Count) > maxLength)
            {
                if (longRows == BadRowHandling.Fail)
                    throw new InvalidOperationException($"Row {row} of the {what} data has {prompt.Count + Math.Max(c.Count, r.Count)} tokens (prompt + the longer response), " +
                        $"more than MaxLength = {maxLength}; raise MaxLength or set LongRows to SkipOrTruncate (which cuts the prompt from the left).");
                tooLong++;
            }
            examples.Add((prompt, c, r, margin));
        }
        if (empty > 0) ch.Warning($"{empty} {what} row(s) with an empty {string.Join(", ", columns.Texts)} were skipped.");
        if (identical > 0) ch.Warning($"{identical} {what} row(s) whose {columns.Chosen} equals {columns.Rejected} were skipped.");
        if (examples.Count == 0) throw new ArgumentException($"No {what} row holds a usable preference pair (empty: {empty}, identical: {identical}).", what + "Data");
        var pairs = PreferencePairs.FromExamples(examples, maxLength);
        if (tooLong > 0) ch.Warning($"{tooLong} {what} pair(s) longer than MaxLength = {maxLength} tokens were cut (the prompt from the left, then the response's end).");
        return pairs;
    }
}
