using MLNetPeft.Architectures;
using MLNetPeft.BaseModel;
using MLNetPeft.Tokenization;
using static TorchSharp.torch;

// Loads an HF checkpoint folder (config.json, safetensors weights, tokenizer files), tokenizes a prompt with the
// checkpoint's own tokenizer and prints the model's five most likely next tokens. Without arguments it uses the
// bundled base model.
//
//   dotnet run --project samples/LoadCheckpoint [-- <hf-checkpoint-folder> [prompt]]
//   dotnet run --project samples/LoadCheckpoint -- ../shared/data/hf_tiny/lmbuddy_fake_gpt2 "Hello world"

string folder = args.Length > 0 ? args[0] : BundledBaseModel.Folder;
string prompt = args.Length > 1 ? args[1] : "Count from 3 to 7: 3, 4,";

var config = PretrainedModels.LoadConfig(folder);
Console.WriteLine($"{config.ModelType} checkpoint, vocabulary {config.VocabSize}");
var tokenizer = TextTokenizer.FromPretrained(folder);
var ids = tokenizer.Encode(prompt);
Console.WriteLine($"{tokenizer.Kind} tokenizer: \"{prompt}\" -> [{string.Join(", ", ids)}]");

using var model = PretrainedModels.LoadCausalLM(folder);
Console.WriteLine($"{model.GetType().Name}: {model.ParameterCount():N0} parameters, {model.LayerCount} layers");
if (model.LoadReport!.UnusedCheckpointKeys.Count > 0)
    Console.WriteLine($"checkpoint tensors this class does not use: {string.Join(", ", model.LoadReport.UnusedCheckpointKeys)}");

using var _ = no_grad();
using var input = tensor(ids.Select(i => (long)i).ToArray()).unsqueeze(0);
using var logits = model.Forward(input);
using var probabilities = logits[0, -1].softmax(-1);
var (values, indices) = probabilities.topk(5);
Console.WriteLine("most likely next tokens:");
for (int i = 0; i < 5; i++)
{
    int id = (int)indices[i].item<long>();
    Console.WriteLine($"  {id,6}  {values[i].item<float>():P4}  \"{tokenizer.Decode([id], skipSpecialTokens: false)}\"");
}
return 0;
