using Microsoft.ML;
using Microsoft.ML.Data;

// FreshProcess <model.zip> <column> <prompt>...: loads the model with mlContext.Model.Load only, transforms the prompts
// (column "Text") and prints the values of <column>, one per line, escaped as JSON strings.
var ml = new MLContext(seed: 7);
var model = ml.Model.Load(args[0], out _);
var data = ml.Data.LoadFromEnumerable(args.Skip(2).Select(p => new Input { Text = p }));
foreach (var value in model.Transform(data).GetColumn<string>(args[1]))
    Console.WriteLine(System.Text.Json.JsonSerializer.Serialize(value));

sealed class Input
{
    public string Text { get; set; } = "";
}
