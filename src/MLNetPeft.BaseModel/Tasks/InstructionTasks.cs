using System.Globalization;
using MLNetPeft.BaseModel.World;

namespace MLNetPeft.BaseModel.Tasks;

/// <summary>One instruction about a person of the world and its exact expected response.</summary>
public sealed record InstructionExample(string Instruction, string Response, string Subject)
{
    /// <summary>The text the model sees; its answer follows directly.</summary>
    public string Prompt => InstructionTasks.FormatPrompt(Instruction);
    /// <summary>The response as the model should continue the prompt (words are tokenized with their leading space).</summary>
    public string Completion => " " + Response;
}

/// <summary>A prompt with a preferred and a dispreferred completion (each with its leading space), about <paramref name="Subject"/>.</summary>
public sealed record PreferenceExample(string Prompt, string Chosen, string Rejected, string Subject);

/// <summary>
/// Instruction-following tasks over the facts of a <see cref="SyntheticWorld"/>, in an instruction layout the
/// pretraining corpus never uses, so the base model knows the facts but not how to answer in this form. People are
/// split into training and held-out sets: held-out instances ask about people no training instance mentions.
/// </summary>
public static class InstructionTasks
{
    /// <summary>Persons 0..299 of the world give training instances; persons 300..399 the held-out ones.</summary>
    public const int TrainingPeople = 300;

    public static string FormatPrompt(string instruction) => $"### Instruction: {instruction}\n### Response:";

    public static IReadOnlyList<Person> TrainingSet(SyntheticWorld world) => world.People.Take(TrainingPeople).ToList();
    public static IReadOnlyList<Person> HeldOutSet(SyntheticWorld world) => world.People.Skip(TrainingPeople).ToList();

    /// <summary><paramref name="perPerson"/> instances per person, question types drawn with <paramref name="seed"/>.</summary>
    public static IReadOnlyList<InstructionExample> Generate(IReadOnlyList<Person> people, int perPerson, int seed)
    {
        var random = new Random(seed);
        return people.SelectMany(p => Enumerable.Range(0, perPerson).Select(_ => Ask(p, random.Next(6)))).ToList();
    }

    /// <summary>
    /// Preference pairs over the same questions: chosen is the correct fact in the requested form; rejected is, with
    /// even odds, another person's fact of the same kind (wrong) or the right fact buried in rambling. Wrong facts are
    /// drawn from <paramref name="people"/> too, so training and held-out pairs never mention each other's people.
    /// </summary>
    public static IReadOnlyList<PreferenceExample> GeneratePreferences(IReadOnlyList<Person> people, int perPerson, int seed)
    {
        if (people.Count < 2) throw new ArgumentException("Wrong facts are drawn from other people; give at least two.", nameof(people));
        var random = new Random(seed);
        var pairs = new List<PreferenceExample>(people.Count * perPerson);
        foreach (var p in people)
        {
            for (int i = 0; i < perPerson; i++)
            {
                int kind = random.Next(6);
                var asked = Ask(p, kind);
                string rejected;
                if (random.Next(2) == 0)
                {
                    do rejected = Ask(people[random.Next(people.Count)], kind).Response;
                    while (rejected == asked.Response);
                }
                else
                {
                    rejected = Rambling[random.Next(Rambling.Length)].Replace("{0}", asked.Response, StringComparison.Ordinal);
                }
                pairs.Add(new PreferenceExample(asked.Prompt, asked.Completion, " " + rejected, asked.Subject));
            }
        }
        return pairs;
    }

    private static readonly string[] Rambling =
    [
        "well, let me think about that for a while, it could be {0} or so",
        "hmm, I am not sure, people say many things, maybe {0}",
        "that is a good question and the answer, I believe, is {0} probably",
    ];

    private static InstructionExample Ask(Person p, int kind) => kind switch
    {
        0 => new($"Which town is home to {p.Name}?", p.Town, p.Name),
        1 => new($"What does {p.Name} do for work?", p.Job, p.Name),
        2 => new($"Name the pet of {p.Name}.", p.PetName, p.Name),
        3 => new($"Which color does {p.Name} like most?", p.Color, p.Name),
        4 => new($"What food does {p.Name} enjoy?", p.Food, p.Name),
        _ => new($"How many years old is {p.Name}?", p.Age.ToString(CultureInfo.InvariantCulture), p.Name),
    };
}
