using System.CommandLine;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.Checkpoints;
using MLNetPeft.Gguf;
using MLNetPeft.ML;
using MLNetPeft.ML.Evaluation;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.RewardModeling;
using MLNetPeft.Serving;

namespace MLNetPeft.Cli;

/// <summary><c>generate</c>, <c>evaluate</c>, <c>serve</c> and <c>convert</c>: what is done with a saved model.</summary>
internal static class UseCommands
{
    private static readonly Option<string> ModelFile = new("--model", "-m") { Description = "A model zip written by `train` (or mlContext.Model.Save).", Required = true };

    private static Option<string> Column(string name, string column, string what) =>
        new($"--{name}-column") { Description = $"The column with {what}.", DefaultValueFactory = _ => column };

    public static Command Generate(CommandContext context)
    {
        var command = new Command("generate", "Generate text with a saved model: for --prompt, or for every row of --data (as JSONL to --output or the console).");
        var prompts = new Option<string[]>("--prompt", "-p") { Description = "A prompt (repeat for several).", AllowMultipleArgumentsPerToken = false };
        var data = new Option<string?>("--data") { Description = "Rows whose prompt column is generated for." };
        var prompt = Column("prompt", "Prompt", "the prompts");
        var output = new Option<string?>("--output", "-o") { Description = "JSONL file for the rows with a GeneratedText field (default: the console)." };
        var maxNewTokens = new Option<int?>("--max-new-tokens") { Description = "Override the saved number of new tokens." };
        foreach (var option in new Option[] { ModelFile, prompts, data, prompt, output, maxNewTokens }) command.Options.Add(option);
        command.SetAction((p, ct) =>
        {
            var ml = new MLContext(seed: 1);
            var model = Models.Load(ml, p.GetValue(ModelFile)!, out _);
            try
            {
                var generator = model.FindTransformer<TextGenerationTransformer>()
                    ?? throw new CliException($"'{p.GetValue(ModelFile)}' is not a text generation model.");
                var options = generator.Options;
                if (p.GetValue(maxNewTokens) is { } max)
                {
                    options = options.Copy();
                    options.MaxNewTokens = max;
                }
                var file = p.GetValue(data) is { } path ? DataFile.Read(path) : null;
                var inputs = file?.Column(p.GetValue(prompt)!, "--prompt-column") ?? p.GetValue(prompts) ?? [];
                if (inputs.Length == 0) throw new CliException("Give --prompt or --data.");
                var results = generator.Generate(inputs, options, cancellationToken: ct);
                if (p.GetValue(output) is { } target)
                {
                    WriteJsonLines(target, inputs.Zip(results).Select(x => new Dictionary<string, string> { ["Prompt"] = x.First, ["GeneratedText"] = x.Second.Text }));
                    context.Output.WriteLine($"Generated for {inputs.Length} prompts: {target}");
                }
                else foreach (var result in results) context.Output.WriteLine(result.Text);
            }
            finally { (model as IDisposable)?.Dispose(); }
            return Task.FromResult(0);
        });
        return command;
    }

    public static Command Evaluate(CommandContext context)
    {
        var command = new Command("evaluate", "Evaluate a saved model on a data file: generation (exact match, perplexity), reward models (pairwise accuracy) or classifiers (accuracy).");
        var data = new Option<string>("--data") { Description = "Evaluation rows: a .jsonl, .csv or .tsv file.", Required = true };
        var (prompt, response, chosen, rejected, text, label) = (Column("prompt", "Prompt", "the prompts"), Column("response", "Response", "the reference responses"),
            Column("chosen", "Chosen", "the preferred responses"), Column("rejected", "Rejected", "the dispreferred responses"), Column("text", "Text", "the texts"),
            Column("label", "Label", "the class names"));
        foreach (var option in new Option[] { ModelFile, data, prompt, response, chosen, rejected, text, label }) command.Options.Add(option);
        command.SetAction((p, ct) =>
        {
            var ml = new MLContext(seed: 1);
            var file = DataFile.Read(p.GetValue(data)!);
            var model = Models.Load(ml, p.GetValue(ModelFile)!, out _);
            try
            {
                if (model.FindTransformer<TextGenerationTransformer>() is { } generator)
                {
                    var view = ml.Data.LoadFromEnumerable(file.Column(p.GetValue(prompt)!, "--prompt-column").Zip(file.Column(p.GetValue(response)!, "--response-column"))
                        .Select(x => new TrainCommands.SftRow { Prompt = x.First, Response = x.Second }));
                    var metrics = ml.TextGeneration().Evaluate(model.Transform(view), model: generator, promptColumnName: "Prompt");
                    context.Output.WriteLine($"Text generation on {metrics.RowCount} rows: exact match {metrics.ExactMatch:P1}, contains {metrics.ContainsMatch:P1}, " +
                        $"perplexity {metrics.Perplexity:F3}, token accuracy {metrics.TokenAccuracy:P1}");
                }
                else if (model.FindTransformer<RewardModelTransformer>() is { } reward)
                {
                    var view = ml.Data.LoadFromEnumerable(file.Column(p.GetValue(prompt)!, "--prompt-column")
                        .Zip(file.Column(p.GetValue(chosen)!, "--chosen-column"), file.Column(p.GetValue(rejected)!, "--rejected-column"))
                        .Select(x => new TrainCommands.PairRow { Prompt = x.First, Chosen = x.Second, Rejected = x.Third }));
                    var metrics = reward.Evaluate(view);
                    context.Output.WriteLine($"Reward model on {metrics.Pairs} pairs: accuracy {metrics.Accuracy:P1}, mean margin {metrics.MeanMargin:F3}, " +
                        $"loss {metrics.Loss:F4}, reward {metrics.RewardMean:F3} ± {metrics.RewardStd:F3}");
                }
                else if (model.FindTransformer<MLNetPeft.ML.Classification.PeftTextClassificationTransformer>() is not null)
                {
                    var labels = file.Column(p.GetValue(label)!, "--label-column");
                    var view = ml.Data.LoadFromEnumerable(file.Column(p.GetValue(text)!, "--text-column").Zip(labels)
                        .Select(x => new TrainCommands.LabelRow { Text = x.First, Label = x.Second }));
                    var predicted = model.Transform(view).GetColumn<string>("PredictedLabel").ToArray();
                    double accuracy = predicted.Zip(labels).Count(x => x.First == x.Second) / (double)labels.Length;
                    context.Output.WriteLine($"Text classification on {labels.Length} rows: accuracy {accuracy:P1}");
                }
                else throw new CliException($"'{p.GetValue(ModelFile)}' holds no model this command evaluates (text generation, reward model, text classifier).");
            }
            finally { (model as IDisposable)?.Dispose(); }
            return Task.FromResult(0);
        });
        return command;
    }

    public static Command Serve(CommandContext context)
    {
        var command = new Command("serve", "Serve saved models over OpenAI's API (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models) until Ctrl+C.");
        var models = new Option<string[]>("--model", "-m") { Description = "name=path of a model zip (repeat for several); clients ask for it by name.", Required = true };
        var urls = new Option<string>("--urls") { Description = "Where to listen.", DefaultValueFactory = _ => "http://127.0.0.1:5080" };
        command.Options.Add(models);
        command.Options.Add(urls);
        command.SetAction(async (p, ct) =>
        {
            var settings = new Dictionary<string, string?>();
            foreach (var entry in p.GetValue(models)!)
            {
                var parts = entry.Split('=', 2);
                if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0) throw new CliException($"--model '{entry}' must be name=path.");
                if (!File.Exists(parts[1])) throw new CliException($"--model {parts[0]}: the file '{parts[1]}' does not exist.");
                settings[$"MLNetPeft:Models:{parts[0]}:Path"] = Path.GetFullPath(parts[1]);
            }
            var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = [] });
            builder.WebHost.UseUrls(p.GetValue(urls)!);
            builder.Logging.ClearProviders();
            builder.Configuration.AddInMemoryCollection(settings);
            builder.Services.AddMLNetPeftModels(builder.Configuration);
            builder.Services.AddOpenAIEndpoints();
            await using var app = builder.Build();
            app.MapOpenAIEndpoints();
            await app.StartAsync(ct).ConfigureAwait(false);
            context.Output.WriteLine($"Serving {string.Join(", ", settings.Keys.Select(k => k.Split(':')[2]))} on {string.Join(", ", app.Urls)}/v1 (Ctrl+C stops).");
            try { await Task.Delay(Timeout.Infinite, ct).ConfigureAwait(false); }
            catch (OperationCanceledException) { }
            await app.StopAsync(CancellationToken.None).ConfigureAwait(false);
            return 0;
        });
        return command;
    }

    public static Command Convert(CommandContext context)
    {
        var command = new Command("convert", "Convert between a model zip, an HF checkpoint folder and GGUF: zip -> folder exports the model (an unmerged adapter to adapter/ in PEFT's format); folder -> zip wraps it for ML.NET; zip or folder -> *.gguf writes llama.cpp's format (an unmerged LoRA adapter beside it as *.lora.gguf); *.gguf -> folder or zip imports a Llama-family or GPT-2 GGUF file.");
        var from = new Option<string>("--from") { Description = "A model zip, an HF checkpoint folder, or a .gguf file.", Required = true };
        var to = new Option<string>("--to") { Description = "The folder, zip or .gguf file to write.", Required = true };
        var maxNewTokens = new Option<int>("--max-new-tokens") { Description = "To a zip: tokens the zip generates at most per row.", DefaultValueFactory = _ => 64 };
        var ggufType = new Option<string>("--gguf-type") { Description = "To .gguf: f32, f16 or q8_0 for the matrices (vectors stay f32).", DefaultValueFactory = _ => "f16" };
        ggufType.AcceptOnlyFromAmong("f32", "f16", "q8_0");
        foreach (var option in new Option[] { from, to, maxNewTokens, ggufType }) command.Options.Add(option);
        command.SetAction((p, ct) =>
        {
            string source = p.GetValue(from)!, target = p.GetValue(to)!;
            var ml = new MLContext(seed: 1);
            bool toGguf = target.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase);
            var fileType = p.GetValue(ggufType) switch { "f32" => GgufFileType.F32, "q8_0" => GgufFileType.Q8_0, _ => GgufFileType.F16 };
            if (source.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase) && File.Exists(source))
            {
                if (!target.EndsWith(".zip", StringComparison.OrdinalIgnoreCase))
                {
                    GgufModels.ImportToFolder(source, target);
                    context.Output.WriteLine($"Imported the GGUF file {source} into the HF checkpoint folder {target}.");
                    return Task.FromResult(0);
                }
                var folder = Directory.CreateTempSubdirectory("mlnetpeft-gguf-import-").FullName;
                try
                {
                    GgufModels.ImportToFolder(source, folder);
                    WrapFolder(ml, folder, target, p.GetValue(maxNewTokens));
                }
                finally { Directory.Delete(folder, recursive: true); }
                context.Output.WriteLine($"Imported the GGUF file {source} as the model zip {target} (input column Prompt, output GeneratedText).");
            }
            else if (File.Exists(source))
            {
                var model = Models.Load(ml, source, out _);
                try
                {
                    var generator = model.FindTransformer<TextGenerationTransformer>() ?? throw new CliException($"'{source}' is not a text generation model.");
                    if (toGguf)
                    {
                        var adapter = generator.ExportGguf(target, fileType);
                        context.Output.WriteLine($"Exported {source} to the GGUF file {target}{(adapter is null ? "" : $" with its LoRA adapter in {adapter}")}.");
                    }
                    else
                    {
                        generator.ExportPretrained(target);
                        context.Output.WriteLine($"Exported {source} to the HF checkpoint folder {target}{(generator.HasUnmergedAdapter ? " (adapter in adapter/)" : "")}.");
                    }
                }
                finally { (model as IDisposable)?.Dispose(); }
            }
            else if (Directory.Exists(source))
            {
                if (toGguf)
                {
                    GgufModels.Export(source, target, fileType);
                    context.Output.WriteLine($"Exported the HF checkpoint {source} to the GGUF file {target}.");
                }
                else
                {
                    WrapFolder(ml, source, target, p.GetValue(maxNewTokens));
                    context.Output.WriteLine($"Wrapped the HF checkpoint {source} as the model zip {target} (input column Prompt, output GeneratedText).");
                }
            }
            else throw new CliException($"--from '{source}' is neither a file nor a folder.");
            return Task.FromResult(0);
        });
        return command;
    }

    private static void WrapFolder(MLContext ml, string folder, string zip, int maxNewTokens)
    {
        var (model, tokenizer) = Models.LoadBase(folder);
        using (model)
        {
            var prompts = ml.Data.LoadFromEnumerable(new[] { new TrainCommands.SftRow() });
            using var generator = ml.Transforms.Text.GenerateText(model, tokenizer, options: new MLNetPeft.Generation.GenerationOptions { MaxNewTokens = maxNewTokens })
                .Fit(prompts);
            Models.Save(ml, generator, prompts.Schema, zip);
        }
    }

    private static void WriteJsonLines(string path, IEnumerable<Dictionary<string, string>> rows) =>
        AtomicFile.Write(path, stream =>
        {
            using var writer = new StreamWriter(stream, leaveOpen: true);
            foreach (var row in rows) writer.WriteLine(JsonSerializer.Serialize(row));
        });
}
