using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.Architectures;
using MLNetPeft.Generation;
using MLNetPeft.ML;
using MLNetPeft.ML.Generation;
using MLNetPeft.Tokenization;
using static TorchSharp.torch;

namespace MLNetPeft.Benchmarks;

/// <summary>
/// A model zip whose weights file is over 2 GiB: a ~750M-parameter fp32 Llama config (one 3.0 GB model.safetensors)
/// goes into a GenerateText transformer with the checkpoint embedded, is saved with mlContext.Model.Save, loaded
/// with mlContext.Model.Load and must generate the same text. Prints the sizes, each phase's time and the peak
/// resident memory (which stays near two models' weights, not the three or four that whole-file buffers would add).
///
///   dotnet run -c Release --project tests/MLNetPeft.Benchmarks -- --large-zip [scratch folder]   (needs ~13 GB of disk, ~8 GB of memory)
/// </summary>
internal static class LargeZipBenchmark
{
    public sealed class Row
    {
        public string Prompt { get; set; } = "";
    }

    public static void Run(string? scratch)
    {
        var root = scratch ?? Path.Combine(Path.GetTempPath(), "mlnetpeft-large-zip-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(root);
        try
        {
            Measure(root);
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    private static void Measure(string root)
    {
        var config = new LlamaConfig
        {
            VocabSize = 32000, HiddenSize = 2048, IntermediateSize = 5632, NumHiddenLayers = 12, NumAttentionHeads = 16, NumKeyValueHeads = 16,
            MaxPositionEmbeddings = 256, TieWordEmbeddingsField = false,
        };
        var checkpoint = Path.Combine(root, "checkpoint");
        var clock = Stopwatch.StartNew();
        using (var fresh = new LlamaForCausalLM(config)) fresh.SavePretrained(checkpoint);
        WriteByteTokenizer(checkpoint);
        long weightBytes = new FileInfo(Path.Combine(checkpoint, "model.safetensors")).Length;
        Console.WriteLine($"checkpoint: {weightBytes / 1e9:F2} GB model.safetensors ({weightBytes / (double)(1L << 30):F2} GiB), written in {clock.Elapsed.TotalSeconds:F0} s");

        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(new[] { new Row { Prompt = "Hello" } });
        var options = new GenerationOptions { MaxNewTokens = 4 };
        var zip = Path.Combine(root, "large.zip");
        List<string> expected;
        File.WriteAllText("/proc/self/clear_refs", "5");
        using (var model = PretrainedModels.LoadCausalLM(checkpoint))
        {
            clock.Restart();
            using var fitted = ml.Transforms.Text.GenerateText(model, TextTokenizer.FromPretrained(checkpoint), options: options, baseModelStorage: BaseModelStorage.Embed).Fit(data);
            double fit = clock.Elapsed.TotalSeconds;
            expected = fitted.Transform(data).GetColumn<string>("GeneratedText").ToList();
            clock.Restart();
            ml.Model.Save(fitted, data.Schema, zip);
            Console.WriteLine($"fit (embeds the checkpoint): {fit:F0} s; mlContext.Model.Save: {clock.Elapsed.TotalSeconds:F0} s, zip {new FileInfo(zip).Length / 1e9:F2} GB");
        }
        GC.Collect();
        GC.WaitForPendingFinalizers();
        clock.Restart();
        var loaded = new MLContext(seed: 2).Model.Load(zip, out _);
        double load = clock.Elapsed.TotalSeconds;
        var generated = loaded.Transform(data).GetColumn<string>("GeneratedText").ToList();
        (loaded as IDisposable)?.Dispose();
        Console.WriteLine($"mlContext.Model.Load: {load:F0} s; same generated text: {generated.SequenceEqual(expected)}");
        Console.WriteLine($"peak resident memory: {StatusBytes("VmHWM") / 1e9:F2} GB (weights {weightBytes / 1e9:F2} GB each for the model given and the model loaded)");
        if (!generated.SequenceEqual(expected)) throw new InvalidOperationException("The reloaded model generated different text.");
    }

    /// <summary>One token per printable ASCII character (byte-level spelling), so that generation has a tokenizer.</summary>
    private static void WriteByteTokenizer(string folder)
    {
        var vocab = new JsonObject { ["Ċ"] = 0, ["Ġ"] = 1 };
        int id = 2;
        for (char c = '!'; c <= '~'; c++) vocab[c.ToString()] = id++;
        vocab["<|endoftext|>"] = id;
        File.WriteAllText(Path.Combine(folder, "vocab.json"), vocab.ToJsonString());
        File.WriteAllText(Path.Combine(folder, "merges.txt"), "#version: 0.2\n");
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), """{"eos_token": "<|endoftext|>"}""");
    }

    private static long StatusBytes(string field) => MemoryBenchmark.StatusBytes(field);
}
