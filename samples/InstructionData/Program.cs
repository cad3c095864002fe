// Writes the bundled base model's instruction tasks as JSONL files (fields Prompt and Response), for the CLI:
//   dotnet run --project samples/InstructionData -- train.jsonl heldout.jsonl
// Training rows ask about the training people of the synthetic world, held-out rows about people no training row mentions.
using System.Text.Json;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Tasks;

if (args.Length != 2)
{
    Console.Error.WriteLine("usage: InstructionData <train.jsonl> <heldout.jsonl>");
    return 1;
}
var world = BaseModelRecipe.World();
static IEnumerable<string> Lines(IEnumerable<InstructionExample> examples) =>
    examples.Select(e => JsonSerializer.Serialize(new { e.Prompt, Response = e.Completion }));
File.WriteAllLines(args[0], Lines(InstructionTasks.Generate(InstructionTasks.TrainingSet(world), 2, 1)));
File.WriteAllLines(args[1], Lines(InstructionTasks.Generate(InstructionTasks.HeldOutSet(world), 1, 2).Take(100)));
Console.WriteLine($"Wrote {args[0]} and {args[1]}.");
return 0;
