using System.Text;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.ML.Generation;

namespace MLNetPeft.ML.Evaluation;

/// <summary>Quality of generated text against reference responses.</summary>
public sealed class TextGenerationMetrics
{
    /// <summary>Rows whose generated text equals the reference after normalisation (case, punctuation, spacing).</summary>
    public double ExactMatch { get; init; }
    /// <summary>Rows whose normalised generated text contains the normalised reference.</summary>
    public double ContainsMatch { get; init; }
    /// <summary>exp(mean negative log-likelihood) of the reference responses (and eos) given their prompts; null without a model.</summary>
    public double? Perplexity { get; init; }
    /// <summary>Share of reference tokens the model ranks first under teacher forcing; null without a model.</summary>
    public double? TokenAccuracy { get; init; }
    public long RowCount { get; init; }

    public override string ToString() =>
        $"exact match {ExactMatch:P1}, contains {ContainsMatch:P1}" +
        (Perplexity is { } p ? $", perplexity {p:F3}, token accuracy {TokenAccuracy:P1}" : "") + $" over {RowCount} rows";
}

/// <summary>Evaluation of text generation, ML.NET style: <c>mlContext.TextGeneration().Evaluate(...)</c>.</summary>
public sealed class TextGenerationCatalog
{
    internal TextGenerationCatalog(MLContext context) => Context = context;

    public MLContext Context { get; }

    /// <summary>
    /// Compares <paramref name="generatedColumnName"/> with <paramref name="labelColumnName"/> in <paramref name="data"/>
    /// (the output of a generation transformer). With <paramref name="model"/>, also scores the references under the
    /// model (perplexity, token accuracy) given <paramref name="promptColumnName"/>.
    /// </summary>
    public TextGenerationMetrics Evaluate(IDataView data, string labelColumnName = "Response", string generatedColumnName = "GeneratedText",
        TextGenerationTransformer? model = null, string? promptColumnName = null)
    {
        ArgumentNullException.ThrowIfNull(data);
        foreach (var column in new[] { labelColumnName, generatedColumnName }.Concat(model is null ? [] : [promptColumnName ?? model.InputColumnName]))
        {
            var col = data.Schema.GetColumnOrNull(column)
                ?? throw new ArgumentOutOfRangeException(nameof(data), $"The data has no column '{column}'.");
            if (col.Type is not TextDataViewType) throw new ArgumentOutOfRangeException(nameof(data), $"Column '{column}' is {col.Type}, not text.");
        }
        var labels = data.GetColumn<string>(labelColumnName).ToList();
        var generated = data.GetColumn<string>(generatedColumnName).ToList();
        if (labels.Count == 0) throw new ArgumentException("The data view has no rows to evaluate.", nameof(data));
        int exact = 0, contains = 0;
        for (int i = 0; i < labels.Count; i++)
        {
            string reference = Normalize(labels[i]), output = Normalize(generated[i]);
            if (output == reference) exact++;
            if (output.Contains(reference, StringComparison.Ordinal)) contains++;
        }
        double? perplexity = null, tokenAccuracy = null;
        if (model is not null)
        {
            var prompts = data.GetColumn<string>(promptColumnName ?? model.InputColumnName).ToList();
            double nll = 0;
            long tokens = 0, correct = 0;
            for (int i = 0; i < labels.Count; i++)
            {
                var score = model.Score(prompts[i], labels[i]);
                nll += score.NegativeLogLikelihood;
                tokens += score.Tokens;
                correct += score.Correct;
            }
            perplexity = Math.Exp(nll / tokens);
            tokenAccuracy = (double)correct / tokens;
        }
        return new TextGenerationMetrics
        {
            ExactMatch = (double)exact / labels.Count, ContainsMatch = (double)contains / labels.Count,
            Perplexity = perplexity, TokenAccuracy = tokenAccuracy, RowCount = labels.Count,
        };
    }

    /// <summary>Lower case, punctuation removed, white space collapsed (SQuAD-style answer normalisation without article removal).</summary>
    public static string Normalize(string? text)
    {
        if (string.IsNullOrEmpty(text)) return "";
        var sb = new StringBuilder(text.Length);
        bool space = false;
        foreach (var c in text.ToLowerInvariant())
        {
            if (char.IsPunctuation(c)) continue;
            if (char.IsWhiteSpace(c)) { space = sb.Length > 0; continue; }
            if (space) { sb.Append(' '); space = false; }
            sb.Append(c);
        }
        return sb.ToString();
    }
}

public static class TextGenerationCatalogExtensions
{
    /// <summary>Text-generation evaluation for this context.</summary>
    public static TextGenerationCatalog TextGeneration(this MLContext mlContext) => new(mlContext ?? throw new ArgumentNullException(nameof(mlContext)));
}
