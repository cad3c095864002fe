using LLama;
using LLama.Common;
using LLama.Native;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Tasks;
using MLNetPeft.Display;
using MLNetPeft.Generation;
using MLNetPeft.Gguf;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Generation;
using MLNetPeft.Training;
using MLNetPeft.Tuners.Lora;
using Spectre.Console;

namespace MLNetPeft.Samples.GgufLlamaCpp;

/// <summary>What the sample measured: the held-out answers of each runtime and their exact match, and the fit's loss curve.</summary>
public sealed record SampleResult(IReadOnlyList<string> Expected, IReadOnlyList<string> BaseAnswers, IReadOnlyList<string> OurAnswers,
    IReadOnlyList<string> LlamaCppAnswers, string BasePath, string AdapterPath, IReadOnlyList<(int Step, double Loss)> Losses, string LossPlotPath)
{
    public double ExactMatch(IReadOnlyList<string> answers) => answers.Zip(Expected).Count(p => p.First.Trim() == p.Second) / (double)Expected.Count;
}

public static class LlamaCppSample
{
    /// <summary>Runs the sample; the fit's progress goes to <paramref name="console"/> (null: plain lines in <paramref name="log"/>).</summary>
    public static SampleResult Run(int steps, string folder, TextWriter log, int heldOutCount = int.MaxValue, IAnsiConsole? console = null)
    {
        // llama.cpp reports every tensor it loads; only its errors are of interest here.
        NativeLogConfig.llama_log_set((level, message) => { if (level == LLamaLogLevel.Error) log.Write(message); });
        var ml = new MLContext(seed: 1);
        var world = BaseModelRecipe.World();
        var train = ml.Data.LoadFromEnumerable(InstructionTasks.Generate(InstructionTasks.TrainingSet(world), perPerson: 2, seed: 1).Select(e => new Row(e.Prompt, e.Completion)));
        var heldOut = InstructionTasks.Generate(InstructionTasks.HeldOutSet(world), perPerson: 1, seed: 2).Take(heldOutCount).ToList();
        var test = ml.Data.LoadFromEnumerable(heldOut.Select(e => new Row(e.Prompt, e.Completion)));

        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        var answer = new GenerationOptions { MaxNewTokens = 6, StopStrings = ["\n"] };
        using var untuned = ml.Transforms.Text.GenerateText(model, tokenizer, inputColumnName: "Prompt", options: answer).Fit(train);
        var baseAnswers = untuned.Transform(test).GetColumn<string>("GeneratedText").ToList();

        var options = new CausalLmFineTuningOptions
        {
            PromptColumnName = "Prompt", ResponseColumnName = "Response",
            Lora = new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] },
            Training = new TrainingOptions { MaxSteps = steps, BatchSize = 16, LearningRate = 5e-3, WarmupSteps = 10, WeightDecay = 0, Seed = 1 },
            MaxLength = 64, Generation = answer, Seed = 1,
            MergeAdapter = false,   // keep the adapter separate: llama.cpp applies it to the base file at load time
        };
        // A live progress bar on a terminal, a line every 20 steps in a log; the loss curve as a PNG afterwards.
        var display = new TrainingDisplay(steps, console: console ?? AnsiConsole.Create(new AnsiConsoleSettings
            { Out = new AnsiConsoleOutput(log), Interactive = InteractionSupport.No, Ansi = AnsiSupport.No })) { LineInterval = 20 };
        options.Progress = display;
        var tuned = display.Run(() => ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, options).Fit(train));
        var ourAnswers = tuned.Transform(test).GetColumn<string>("GeneratedText").ToList();

        Directory.CreateDirectory(folder);
        var plotPath = Path.Combine(folder, "loss.png");
        display.SavePlot(plotPath, $"LoRA SFT of the bundled model, {steps} steps");
        log.WriteLine($"loss {display.Losses[0].Loss:F3} -> {display.Losses[^1].Loss:F3}; curve in {plotPath}");
        var basePath = Path.Combine(folder, "base.gguf");
        var adapterPath = tuned.ExportGguf(basePath, GgufFileType.F32)
            ?? throw new InvalidOperationException("The fine-tuned model has no unmerged adapter.");
        log.WriteLine($"exported {basePath} ({new FileInfo(basePath).Length / 1e6:F1} MB) and the LoRA adapter {adapterPath} ({new FileInfo(adapterPath).Length / 1e6:F2} MB)");

        var llamaAnswers = AnswerWithLlamaCpp(basePath, adapterPath, heldOut.Select(e => e.Prompt).ToList(), answer.MaxNewTokens);
        var result = new SampleResult(heldOut.Select(e => e.Response).ToList(), baseAnswers, ourAnswers, llamaAnswers, basePath, adapterPath, display.Losses, plotPath);
        log.WriteLine("| instruction | expected | base | ours (ML.NET) | llama.cpp + adapter |");
        log.WriteLine("|---|---|---|---|---|");
        for (int i = 0; i < Math.Min(5, heldOut.Count); i++)
            log.WriteLine($"| {heldOut[i].Instruction} | {heldOut[i].Response} | {baseAnswers[i].Trim()} | {ourAnswers[i].Trim()} | {llamaAnswers[i].Trim()} |");
        foreach (var (ours, theirs, i) in ourAnswers.Zip(llamaAnswers, Enumerable.Range(0, heldOut.Count)).Where(p => p.First != p.Second))
            log.WriteLine($"answers differ on \"{heldOut[i].Instruction}\": ours \"{ours}\", llama.cpp \"{theirs}\"");
        log.WriteLine($"exact match on {heldOut.Count} held-out instructions: base {result.ExactMatch(baseAnswers):P1}, ours {result.ExactMatch(ourAnswers):P1}, " +
            $"llama.cpp {result.ExactMatch(llamaAnswers):P1}; identical answers {ourAnswers.Zip(llamaAnswers).Count(p => p.First == p.Second)}/{heldOut.Count}");
        return result;
    }

    /// <summary>Greedy answers from llama.cpp with the adapter applied, stopping at a line break as our options do.</summary>
    private static List<string> AnswerWithLlamaCpp(string basePath, string adapterPath, IReadOnlyList<string> prompts, int maxNewTokens)
    {
        var parameters = new ModelParams(basePath) { ContextSize = 256, GpuLayerCount = 0, Threads = Math.Min(Environment.ProcessorCount, 4) };
        using var weights = LLamaWeights.LoadFromFile(parameters);
        using var context = weights.CreateContext(parameters);
        var adapter = weights.NativeHandle.LoadLoraFromFile(adapterPath);
        context.NativeHandle.SetLoraAdapters([(adapter, 1f)]);
        var answers = new List<string>();
        foreach (var prompt in prompts)
        {
            context.NativeHandle.MemoryClear(true);
            var tokens = context.Tokenize(prompt, addBos: false, special: true);
            var batch = new LLamaBatch();
            for (int i = 0; i < tokens.Length; i++) batch.Add(tokens[i], i, LLamaSeqId.Zero, i == tokens.Length - 1);
            var decoder = new StreamingTokenDecoder(context);
            var text = "";
            for (int step = 0; step < maxNewTokens; step++)
            {
                if (context.NativeHandle.Decode(batch) != DecodeResult.Ok) throw new InvalidOperationException("llama_decode failed.");
                var logits = context.NativeHandle.GetLogitsIth(batch.TokenCount - 1);
                int next = 0;
                for (int j = 1; j < logits.Length; j++) if (logits[j] > logits[next]) next = j;
                if ((LLamaToken)next == context.Vocab.EOS) break;
                decoder.Add((LLamaToken)next);
                text = decoder.Read() is var piece ? text + piece : text;
                int stop = text.IndexOf('\n');
                if (stop >= 0) { text = text[..stop]; break; }
                batch.Clear();
                batch.Add((LLamaToken)next, tokens.Length + step, LLamaSeqId.Zero, true);
            }
            answers.Add(text);
        }
        return answers;
    }

    private sealed record Row(string Prompt, string Response);
}
