using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Data;

// FreshProcess <model.zip> <rows.json> <column>...: loads the model with mlContext.Model.Load only, transforms the rows
// of rows.json (objects with Text and Response) and prints, per column, one line: the column's values as a JSON array.
// FreshProcess --malformed-inputs <scratch folder>: see MalformedInputs.
if (args is ["--malformed-inputs", var scratch]) return MalformedInputs.Run(scratch);

var ml = new MLContext(seed: 7);
var model = ml.Model.Load(args[0], out _);
var rows = JsonSerializer.Deserialize<Input[]>(File.ReadAllText(args[1]))!;
var transformed = model.Transform(ml.Data.LoadFromEnumerable(rows));
foreach (var column in args.Skip(2))
{
    object values = transformed.Schema[column].Type switch
    {
        TextDataViewType => transformed.GetColumn<string>(column).ToList(),
        VectorDataViewType { ItemType: TextDataViewType } => transformed.GetColumn<string[]>(column).ToList(),
        VectorDataViewType => transformed.GetColumn<float[]>(column).ToList(),
        _ => transformed.GetColumn<float>(column).ToList(),
    };
    Console.WriteLine(JsonSerializer.Serialize(values));
}
return 0;

sealed class Input
{
    public string Text { get; set; } = "";
    public string Response { get; set; } = "";
}
