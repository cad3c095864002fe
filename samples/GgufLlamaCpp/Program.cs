// Fine-tune the bundled base model with LoRA in an ML.NET pipeline, export it as GGUF (base + unmerged LoRA adapter),
// and answer the held-out questions with llama.cpp (LLamaSharp) next to our own transformer.
//   dotnet run -c Release --project samples/GgufLlamaCpp [-- --steps 200 --out folder]

int steps = 200;
string folder = Path.Combine(Path.GetTempPath(), "mlnetpeft-gguf-sample");
for (int i = 0; i + 1 < args.Length; i += 2)
{
    if (args[i] == "--steps") steps = int.Parse(args[i + 1], System.Globalization.CultureInfo.InvariantCulture);
    else if (args[i] == "--out") folder = args[i + 1];
}
var result = MLNetPeft.Samples.GgufLlamaCpp.LlamaCppSample.Run(steps, folder, Console.Out, console: Spectre.Console.AnsiConsole.Console);
return result.LlamaCppAnswers.SequenceEqual(result.OurAnswers) ? 0 : 1;
