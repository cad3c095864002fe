using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using MLNetPeft.Architectures;
using MLNetPeft.Training;
using MLNetPeft.Training.LanguageModeling;
using MLNetPeft.Tuners.Lora;
using MLNetPeft.Tuners.QLora;
using static TorchSharp.torch;

namespace MLNetPeft.Benchmarks;

/// <summary>
/// Peak resident memory of one training step, as the OS measures it (VmHWM in /proc/self/status, reset just before the
/// step through /proc/self/clear_refs), for full fine-tuning, LoRA and QLoRA of a ~100M-parameter Llama config, each in a
/// process of its own. glibc is told to return freed memory at once (a fixed mmap threshold, malloc_trim) so that the
/// resident size follows what libtorch really holds: the float32 weights that quantisation replaced leave no trace.
/// </summary>
public static class MemoryBenchmark
{
    private static LlamaConfig Config() => new()
    {
        VocabSize = 8192, HiddenSize = 768, IntermediateSize = 2048, NumHiddenLayers = 12, NumAttentionHeads = 12, NumKeyValueHeads = 12,
        MaxPositionEmbeddings = 256, TieWordEmbeddingsField = false,
    };

    private const int Batch = 4, Sequence = 256;

    public static void Run()
    {
        var results = new List<JsonElement>();
        foreach (var method in new[] { "full", "lora", "qlora" })
        {
            var start = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in Environment.GetCommandLineArgs().Skip(1).Where(a => a != "--qlora-memory")) start.ArgumentList.Add(a);
            if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet") start.ArgumentList.Insert(0, typeof(MemoryBenchmark).Assembly.Location);
            start.ArgumentList.Add("--memory-probe");
            start.ArgumentList.Add(method);
            start.Environment["MALLOC_MMAP_THRESHOLD_"] = "65536";
            using var process = Process.Start(start)!;
            var output = process.StandardOutput.ReadToEnd();
            var errors = process.StandardError.ReadToEnd();
            process.WaitForExit();
            if (process.ExitCode != 0) throw new InvalidOperationException($"The {method} probe failed: {errors}");
            results.Add(JsonDocument.Parse(output.Trim().Split('\n')[^1]).RootElement);
        }
        var byMethod = results.ToDictionary(r => r.GetProperty("method").GetString()!);
        double baseFloat32 = byMethod["full"].GetProperty("linearWeightBytes").GetDouble();
        Console.WriteLine($"Peak resident memory of one training step (Llama {byMethod["full"].GetProperty("parameters").GetInt64() / 1e6:F1}M parameters, batch {Batch} × {Sequence} tokens, AdamW; one process each):");
        Console.WriteLine();
        Console.WriteLine("| method | trainable | resident before the step | peak during the step | peak − before |");
        Console.WriteLine("|---|---|---|---|---|");
        foreach (var r in results)
            Console.WriteLine($"| {r.GetProperty("method").GetString()} | {r.GetProperty("trainable").GetInt64():N0} | {Mb(r, "before")} | {Mb(r, "peak")} | {(r.GetProperty("peak").GetDouble() - r.GetProperty("before").GetDouble()) / 1e6:F0} MB |");
        double saved = byMethod["lora"].GetProperty("peak").GetDouble() - byMethod["qlora"].GetProperty("peak").GetDouble();
        Console.WriteLine();
        Console.WriteLine($"QLoRA's peak is {saved / 1e6:F0} MB below LoRA's: {saved / baseFloat32:P0} of the base's float32 linear weights ({baseFloat32 / 1e6:F0} MB); the target is at least 60 %.");
        if (saved < 0.6 * baseFloat32) throw new InvalidOperationException("QLoRA saves less than 60 % of the base weights' float32 size.");
    }

    private static string Mb(JsonElement r, string field) => $"{r.GetProperty(field).GetDouble() / 1e6:F0} MB";

    [DllImport("libc", EntryPoint = "malloc_trim")]
    private static extern int MallocTrim(nuint pad);

    /// <summary>One method in this process: build, adapt, then measure the training step alone; prints one JSON line.</summary>
    public static void Probe(string method)
    {
        var model = new LlamaForCausalLM(Config());
        model.InitializeWeights(1);
        long linearWeightBytes = model.named_modules().Where(m => m.module is TorchSharp.Modules.Linear && m.name != "lm_head")
            .Sum(m => ((TorchSharp.Modules.Linear)m.module).weight!.numel() * 4);
        switch (method)
        {
            case "full":
                break;
            case "lora":
                LoraModel.Apply(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] }, seed: 1);
                break;
            case "qlora":
                Nf4Model.Quantize(model);
                LoraModel.Apply(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] }, seed: 1);
                break;
            default:
                throw new ArgumentException($"Unknown method '{method}'.");
        }
        var random = new Random(2);
        var blocks = TokenBlocks.Pack(Enumerable.Range(0, 64).Select(_ => (IReadOnlyList<int>)Enumerable.Range(0, Sequence).Select(_ => random.Next(1, 8192)).ToList()), Sequence, 0);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        MallocTrim(0);
        File.WriteAllText("/proc/self/clear_refs", "5");   // resets VmHWM to the current resident size
        long before = StatusBytes("VmRSS");
        var trainer = new LanguageModelTrainer(model, new TrainingOptions { MaxSteps = 1, BatchSize = Batch, LearningRate = 1e-4, WarmupSteps = 0, Seed = 3 });
        trainer.Train(blocks);
        long peak = StatusBytes("VmHWM");
        long trainable = model.parameters().Where(p => p.requires_grad).Sum(p => p.numel());
        Console.WriteLine(JsonSerializer.Serialize(new { method, parameters = model.ParameterCount(), trainable, linearWeightBytes, before, peak }));
    }

    internal static long StatusBytes(string field)
    {
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith(field + ":", StringComparison.Ordinal));
        return long.Parse(line.Split(':')[1].Trim().Split(' ')[0]) * 1024;
    }
}
