using System.Text;
using MLNetPeft.BaseModel.World;

namespace MLNetPeft.BaseModel.Corpus;

/// <summary>
/// Language-like documents about a <see cref="SyntheticWorld"/>: person profiles in varied phrasings, short stories
/// built from the facts, arithmetic, counting and lists, and question/answer pairs. The same world and seed always
/// give the same documents, byte for byte.
/// </summary>
public static class CorpusGenerator
{
    /// <summary><paramref name="count"/> documents drawn with <paramref name="seed"/> (use different seeds for training and validation).</summary>
    public static IEnumerable<string> Documents(SyntheticWorld world, int count, int seed)
    {
        var random = new Random(seed);
        for (int i = 0; i < count; i++)
        {
            int kind = random.Next(100);
            yield return kind switch
            {
                < 35 => Profile(world.People[random.Next(world.People.Count)], random),
                < 55 => Story(world, random),
                < 72 => Arithmetic(random),
                < 87 => Lists(world, random),
                _ => Questions(world.People[random.Next(world.People.Count)], random),
            };
        }
    }

    /// <summary>The knowledge base: one paragraph of facts per knowledge-base person, people the corpus never mentions.</summary>
    public static string KnowledgeBase(SyntheticWorld world)
    {
        var sb = new StringBuilder();
        foreach (var p in world.KnowledgeBasePeople)
            sb.AppendJoin(' ', Facts(p)).Append("\n\n");
        return sb.ToString();
    }

    /// <summary>Every fact about <paramref name="p"/>, one sentence each, in a fixed order and phrasing.</summary>
    public static IReadOnlyList<string> Facts(Person p) =>
    [
        $"{p.Name} lives in {p.Town}.", $"{p.Name} is {p.Age} years old.", $"{p.Name} works as a {p.Job}.",
        $"The favorite color of {p.Name} is {p.Color}.", $"{p.Name} has a {p.Pet} named {p.PetName}.",
        $"{p.Name} likes to eat {p.Food}.", $"{p.Name} is a friend of {p.Friend}.", $"{p.Name} is the sibling of {p.Sibling}.",
    ];

    private static string Profile(Person p, Random r)
    {
        string[][] phrasings =
        [
            [$"{p.Name} lives in {p.Town}.", $"{p.Name} has a home in {p.Town}.", $"The town of {p.Name} is {p.Town}."],
            [$"{p.Name} is {p.Age} years old.", $"The age of {p.Name} is {p.Age}."],
            [$"{p.Name} works as a {p.Job}.", $"{p.Name} is a {p.Job} by trade.", $"The job of {p.Name} is {p.Job}."],
            [$"The favorite color of {p.Name} is {p.Color}.", $"{p.Name} likes the color {p.Color} best."],
            [$"{p.Name} has a {p.Pet} named {p.PetName}.", $"{p.PetName} is the {p.Pet} of {p.Name}."],
            [$"{p.Name} likes to eat {p.Food}.", $"The favorite food of {p.Name} is {p.Food}."],
            [$"{p.Name} is a friend of {p.Friend}.", $"{p.Friend} and {p.Name} are friends."],
            [$"{p.Name} is the sibling of {p.Sibling}.", $"{p.Sibling} is the sibling of {p.Name}."],
        ];
        var chosen = phrasings.OrderBy(_ => r.Next()).Take(r.Next(3, phrasings.Length + 1)).Select(options => options[r.Next(options.Length)]);
        return string.Join(' ', chosen);
    }

    private static string Story(SyntheticWorld world, Random r)
    {
        var p = world.People[r.Next(world.People.Count)];
        var friend = world.People.FirstOrDefault(x => x.Name == p.Friend) ?? p;
        var town = SyntheticWorld.Pick(SyntheticWorld.Towns, r);
        string[] openings = ["One morning", "One day", "Last spring", "On a cold evening", "Early one summer"];
        var sb = new StringBuilder();
        sb.Append($"{SyntheticWorld.Pick(openings, r)}, {p.Name} the {p.Job} left {p.Town} and walked to {town} with {p.PetName} the {p.Pet}. ");
        sb.Append(r.Next(2) == 0
            ? $"At the market {p.Name} bought some {p.Food} and a {p.Color} basket. "
            : $"On the road {p.Name} found a {p.Color} stone and put it in a bag. ");
        sb.Append($"In {town}, {p.Name} met {friend.Name}, who works as a {friend.Job}. ");
        sb.Append(r.Next(2) == 0
            ? $"They talked about {friend.PetName}, the {friend.Pet} of {friend.Name}, and shared the {p.Food}. "
            : $"{friend.Name} told a story about {friend.Town}, and {p.Name} laughed. ");
        sb.Append($"When the sun went down, {p.Name} and {p.PetName} went home to {p.Town}.");
        return sb.ToString();
    }

    private static string Arithmetic(Random r)
    {
        var lines = new List<string>();
        for (int i = r.Next(3, 8); i > 0; i--)
        {
            int a = r.Next(0, 50), b = r.Next(0, 50);
            lines.Add(r.Next(3) switch
            {
                0 => $"{a} plus {b} is {a + b}.",
                1 => a >= b ? $"{a} minus {b} is {a - b}." : $"{b} minus {a} is {b - a}.",
                _ => $"{a % 13} times {b % 13} is {a % 13 * (b % 13)}.",
            });
        }
        return string.Join(' ', lines);
    }

    private static string Lists(SyntheticWorld world, Random r)
    {
        switch (r.Next(4))
        {
            case 0:
                int from = r.Next(0, 90), to = from + r.Next(3, 10);
                return $"Count from {from} to {to}: {string.Join(", ", Enumerable.Range(from, to - from + 1))}.";
            case 1:
                var numbers = Enumerable.Range(0, r.Next(3, 7)).Select(_ => r.Next(0, 100)).ToList();
                return $"The numbers {string.Join(", ", numbers)} sorted from small to large are {string.Join(", ", numbers.Order())}.";
            case 2:
                var colors = SyntheticWorld.Colors.OrderBy(_ => r.Next()).Take(r.Next(2, 5)).ToList();
                return $"The flags of {SyntheticWorld.Pick(SyntheticWorld.Towns, r)} are {Join(colors)}. There are {colors.Count} flags.";
            default:
                var people = Enumerable.Range(0, r.Next(2, 5)).Select(_ => world.People[r.Next(world.People.Count)]).DistinctBy(p => p.Name).ToList();
                return $"The {(people.Count == 1 ? "person" : "people")} in the {SyntheticWorld.Pick(SyntheticWorld.Foods, r)} club {(people.Count == 1 ? "is" : "are")} {Join(people.Select(p => p.Name).ToList())}. " +
                    string.Join(' ', people.Select(p => $"{p.Name} lives in {p.Town}."));
        }
    }

    private static string Questions(Person p, Random r)
    {
        (string Q, string A)[] pairs =
        [
            ($"Where does {p.Name} live?", p.Town), ($"How old is {p.Name}?", p.Age.ToString(System.Globalization.CultureInfo.InvariantCulture)),
            ($"What is the job of {p.Name}?", p.Job), ($"What is the favorite color of {p.Name}?", p.Color),
            ($"What is the name of the {p.Pet} of {p.Name}?", p.PetName), ($"Who is a friend of {p.Name}?", p.Friend),
        ];
        return string.Join(' ', pairs.OrderBy(_ => r.Next()).Take(r.Next(1, 4)).Select(x => $"Q: {x.Q} A: {x.A}."));
    }

    private static string Join(IReadOnlyList<string> items) =>
        items.Count == 1 ? items[0] : string.Join(", ", items.Take(items.Count - 1)) + " and " + items[^1];
}
