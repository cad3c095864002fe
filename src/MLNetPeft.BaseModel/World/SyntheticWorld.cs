namespace MLNetPeft.BaseModel.World;

/// <summary>A person of the generated world, with the attributes and relations the corpus states about them.</summary>
public sealed record Person(string Name, int Age, string Town, string Job, string Color, string Pet, string PetName, string Food, string Friend, string Sibling);

/// <summary>
/// A small invented world: people with attributes (age, town, job, favourite colour and food, a named pet) and
/// relations (friend, sibling). Everything is drawn from a seeded generator, so the same seed always gives the
/// same world. Some people are set aside as <see cref="KnowledgeBasePeople"/>: their facts appear only in the
/// knowledge-base text, never in the pretraining corpus, so retrieval can be tested on facts the model cannot know.
/// </summary>
public sealed class SyntheticWorld
{
    public static readonly IReadOnlyList<string> Towns = ["Tolvan", "Brisk", "Marrowby", "Quill", "Esterhold", "Fennick", "Oakmere", "Saltreach", "Dunmore", "Pellow", "Varn", "Heathcote"];
    public static readonly IReadOnlyList<string> Jobs = ["baker", "teacher", "farmer", "doctor", "painter", "sailor", "builder", "singer", "tailor", "miner", "writer", "gardener", "potter", "fisher", "smith", "nurse"];
    public static readonly IReadOnlyList<string> Colors = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "silver", "brown"];
    public static readonly IReadOnlyList<string> Pets = ["cat", "dog", "rabbit", "parrot", "horse", "goat", "turtle", "owl"];
    public static readonly IReadOnlyList<string> Foods = ["bread", "apples", "soup", "cheese", "rice", "plums", "honey", "fish", "pie", "beans"];
    private static readonly string[] Onsets = ["b", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "tr", "fl", "kl", "th", "sh"];
    private static readonly string[] Vowels = ["a", "e", "i", "o", "u", "ai", "ea", "oa"];
    private static readonly string[] Codas = ["", "", "n", "r", "l", "s", "th", "m", "x"];

    public SyntheticWorld(int seed, int people = 400, int knowledgeBasePeople = 60)
    {
        Seed = seed;
        var random = new Random(seed);
        var names = new HashSet<string>(StringComparer.Ordinal);
        while (names.Count < people + knowledgeBasePeople) names.Add(Name(random));
        var nameList = names.ToList();
        var pool = nameList.Take(people).ToList();
        var reserved = nameList.Skip(people).ToList();
        People = pool.Select(n => NewPerson(n, pool, random)).ToList();
        // Knowledge-base people relate only to each other, so no pretraining sentence ever names them.
        KnowledgeBasePeople = reserved.Select(n => NewPerson(n, reserved, random)).ToList();
    }

    public int Seed { get; }
    /// <summary>People whose facts make up the pretraining corpus.</summary>
    public IReadOnlyList<Person> People { get; }
    /// <summary>People whose facts appear only in <see cref="Corpus.CorpusGenerator.KnowledgeBase"/>.</summary>
    public IReadOnlyList<Person> KnowledgeBasePeople { get; }

    /// <summary>
    /// The same names with every attribute and relation drawn again from <paramref name="seed"/> (friends and siblings
    /// among <paramref name="people"/>): counterfactual people, whose facts a model trained on this world does not hold
    /// in its weights, so that a question about them can only be answered from a document that states the new facts.
    /// </summary>
    public static IReadOnlyList<Person> Redraw(IReadOnlyList<Person> people, int seed)
    {
        ArgumentNullException.ThrowIfNull(people);
        if (people.Count < 2) throw new ArgumentException("Friends and siblings are drawn from the others; give at least two people.", nameof(people));
        var random = new Random(seed);
        var names = people.Select(p => p.Name).ToList();
        return names.Select(n => NewPerson(n, names, random)).ToList();
    }

    private static Person NewPerson(string name, IReadOnlyList<string> others, Random random)
    {
        string Other() { string o; do o = others[random.Next(others.Count)]; while (o == name); return o; }
        return new Person(name, random.Next(18, 90), Pick(Towns, random), Pick(Jobs, random), Pick(Colors, random), Pick(Pets, random),
            Name(random), Pick(Foods, random), Other(), Other());
    }

    internal static string Pick(IReadOnlyList<string> items, Random random) => items[random.Next(items.Count)];

    private static string Name(Random random)
    {
        int syllables = random.Next(2, 4);
        var name = string.Concat(Enumerable.Range(0, syllables).Select(_ => Pick(Onsets, random) + Pick(Vowels, random) + Pick(Codas, random)));
        return char.ToUpperInvariant(name[0]) + name[1..];
    }
}
