using System.Globalization;
using MLNetPeft.BaseModel.Corpus;
using MLNetPeft.BaseModel.World;

namespace MLNetPeft.BaseModel.Tasks;

/// <summary>A question about one fact of a person, its exact answer, and which fact it asks for.</summary>
public sealed record FactQuestion(string Question, string Answer, string Subject, string Fact);

/// <summary>
/// Questions about the eight facts of a person (town, age, job, colour, pet name, food, friend, sibling) in two
/// disjoint sets of phrasings: training phrasings, for fine-tuning data and in-context demonstrations, and held-out
/// phrasings, for evaluation only. No held-out phrasing occurs in the pretraining corpus, in
/// <see cref="InstructionTasks"/> or among the training phrasings, so a model that answers them has not been taught
/// the wording (the tests check it). Templates hold {name} and, for the pet, {pet}.
/// </summary>
public static class FactQuestions
{
    /// <summary>The facts asked about, in the order of <see cref="CorpusGenerator.Facts"/>.</summary>
    public static readonly IReadOnlyList<string> FactNames = ["town", "age", "job", "color", "pet name", "food", "friend", "sibling"];

    /// <summary>Training phrasings, per fact (same order as <see cref="FactNames"/>).</summary>
    public static readonly IReadOnlyList<IReadOnlyList<string>> TrainingTemplates =
    [
        ["Which town is home to {name}?", "In which town does {name} live?"],
        ["How many years old is {name}?", "What is the age of {name}?"],
        ["What does {name} do for work?", "Which job does {name} have?"],
        ["Which color does {name} like most?", "What is the favorite color of {name}?"],
        ["Name the pet of {name}.", "What is the name of the {pet} of {name}?"],
        ["What food does {name} enjoy?", "Which food does {name} like to eat?"],
        ["Who is a friend of {name}?", "Name a friend of {name}."],
        ["Who is the sibling of {name}?", "Name the sibling of {name}."],
    ];

    /// <summary>Held-out phrasings, per fact: for evaluation only.</summary>
    public static readonly IReadOnlyList<IReadOnlyList<string>> HeldOutTemplates =
    [
        ["Tell me the town where {name} lives.", "{name} lives in which town?"],
        ["What age is {name}?", "Tell me how old {name} is."],
        ["Tell me the job of {name}.", "What kind of work does {name} do?"],
        ["Tell me the color {name} likes best.", "What color does {name} love?"],
        ["What is the {pet} of {name} called?", "Tell me the name of the {pet} that {name} has."],
        ["Tell me what {name} eats.", "Tell me the food {name} likes."],
        ["Which person is a friend of {name}?", "Tell me a friend of {name}."],
        ["Tell me the sibling of {name}.", "Which person is the sibling of {name}?"],
    ];

    /// <summary><paramref name="perPerson"/> training-phrased questions per person, facts and phrasings drawn with <paramref name="seed"/>.</summary>
    public static IReadOnlyList<FactQuestion> Training(IReadOnlyList<Person> people, int perPerson, int seed)
    {
        var random = new Random(seed);
        return people.SelectMany(p => Enumerable.Range(0, perPerson).Select(_ =>
        {
            int fact = random.Next(FactNames.Count);
            return Ask(p, fact, TrainingTemplates[fact][random.Next(TrainingTemplates[fact].Count)]);
        })).ToList();
    }

    /// <summary>Every fact of every person, asked once in each held-out phrasing.</summary>
    public static IReadOnlyList<FactQuestion> HeldOut(IReadOnlyList<Person> people) =>
        people.SelectMany(p => Enumerable.Range(0, FactNames.Count).SelectMany(fact => HeldOutTemplates[fact].Select(t => Ask(p, fact, t)))).ToList();

    /// <summary>The document that states every fact of <paramref name="p"/> (the knowledge base's paragraph for that person).</summary>
    public static string Document(Person p) => string.Join(' ', CorpusGenerator.Facts(p));

    /// <summary>
    /// Whether <paramref name="answer"/> is <paramref name="expected"/> after SQuAD-style normalisation: surrounding
    /// white space and trailing punctuation removed, case ignored.
    /// </summary>
    public static bool IsExactMatch(string? answer, string expected) =>
        string.Equals(Normalize(answer ?? ""), Normalize(expected), StringComparison.OrdinalIgnoreCase);

    private static string Normalize(string text) => text.Trim().TrimEnd('.', ',', '!', '?', ';', ':').Trim();

    private static FactQuestion Ask(Person p, int fact, string template)
    {
        string answer = fact switch
        {
            0 => p.Town, 1 => p.Age.ToString(CultureInfo.InvariantCulture), 2 => p.Job, 3 => p.Color,
            4 => p.PetName, 5 => p.Food, 6 => p.Friend, _ => p.Sibling,
        };
        var question = template.Replace("{name}", p.Name, StringComparison.Ordinal).Replace("{pet}", p.Pet, StringComparison.Ordinal);
        return new FactQuestion(question, answer, p.Name, FactNames[fact]);
    }
}
