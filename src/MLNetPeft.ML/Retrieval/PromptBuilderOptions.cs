using MLNetPeft.Architectures;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Retrieval.Embeddings;
using MLNetPeft.Tokenization;

namespace MLNetPeft.ML.Retrieval;

/// <summary>How a prompt builder picks its in-context demonstrations from the pool.</summary>
public enum DemonstrationSelection
{
    /// <summary>The first k of the pool, the same for every row.</summary>
    Fixed,
    /// <summary>k drawn at random per row, from the seed and the row's question (so a row gets the same ones in every run and process).</summary>
    Random,
    /// <summary>The k pool questions nearest to the row's question by embedding cosine similarity, nearest last (closest to the question).</summary>
    Nearest,
}

/// <summary>An in-context example: a question and its answer.</summary>
public sealed record Demonstration(string Question, string Answer);

/// <summary>Settings of <c>mlContext.Transforms.Text.BuildPrompt(...)</c>.</summary>
public sealed class PromptBuilderOptions
{
    /// <summary>The question column (text).</summary>
    public string QuestionColumnName { get; set; } = "Query";
    /// <summary>Retrieved passages (a vector of text, as <c>Retrieval().Retrieve</c> writes it); null: no context.</summary>
    public string? PassagesColumnName { get; set; } = "Passages";
    /// <summary>The prompt's text: {demonstrations}, {context} and {question} are filled in; any other text stays.</summary>
    public string Template { get; set; } = "{demonstrations}Context:\n{context}\n\nQuestion: {question}\nAnswer:";
    /// <summary>One demonstration: {question} and {answer}.</summary>
    public string DemonstrationTemplate { get; set; } = "Question: {question}\nAnswer: {answer}\n\n";
    /// <summary>One passage of the context: {index} (from 1) and {passage}; passages are joined by new lines.</summary>
    public string PassageTemplate { get; set; } = "[{index}] {passage}";

    /// <summary>The demonstrations to choose from.</summary>
    public IReadOnlyList<Demonstration> Demonstrations { get; set; } = [];
    /// <summary>Demonstrations per prompt (0: zero-shot).</summary>
    public int DemonstrationCount { get; set; }
    public DemonstrationSelection Selection { get; set; } = DemonstrationSelection.Fixed;
    /// <summary>Seeds <see cref="DemonstrationSelection.Random"/>.</summary>
    public int Seed { get; set; }

    /// <summary>For <see cref="DemonstrationSelection.Nearest"/>: the encoder (with <see cref="Tokenizer"/>); null: the bundled all-MiniLM-L6-v2.</summary>
    public BertModel? Encoder { get; set; }
    public TextTokenizer? Tokenizer { get; set; }
    public SentenceEmbedderOptions Embedding { get; set; } = new();
    public BaseModelStorage EncoderStorage { get; set; } = BaseModelStorage.Auto;

    internal void Validate()
    {
        if (string.IsNullOrWhiteSpace(QuestionColumnName)) throw new ArgumentException("QuestionColumnName needs a column name.", nameof(QuestionColumnName));
        if (PassagesColumnName is { } p && string.IsNullOrWhiteSpace(p)) throw new ArgumentException("PassagesColumnName is a column name or null (no context).", nameof(PassagesColumnName));
        if (string.IsNullOrEmpty(Template) || !Template.Contains("{question}", StringComparison.Ordinal))
            throw new ArgumentException("The template must contain {question}.", nameof(Template));
        if (PassagesColumnName is not null && !Template.Contains("{context}", StringComparison.Ordinal))
            throw new ArgumentException("With a passages column the template must contain {context}.", nameof(Template));
        if (DemonstrationCount < 0) throw new ArgumentOutOfRangeException(nameof(DemonstrationCount), DemonstrationCount, "must be ≥ 0");
        if (DemonstrationCount > 0)
        {
            if (!Template.Contains("{demonstrations}", StringComparison.Ordinal)) throw new ArgumentException("With demonstrations the template must contain {demonstrations}.", nameof(Template));
            if (Demonstrations is null || Demonstrations.Count < DemonstrationCount)
                throw new ArgumentException($"DemonstrationCount is {DemonstrationCount} but the pool holds {Demonstrations?.Count ?? 0} demonstrations.", nameof(Demonstrations));
            if (Demonstrations.Any(d => d is null || d.Question is null || d.Answer is null)) throw new ArgumentException("A demonstration has no question or answer.", nameof(Demonstrations));
        }
        if (!Enum.IsDefined(Selection)) throw new ArgumentOutOfRangeException(nameof(Selection), Selection, "not a DemonstrationSelection");
        EmbedderPackage.CheckPair(Encoder, Tokenizer);
    }
}
