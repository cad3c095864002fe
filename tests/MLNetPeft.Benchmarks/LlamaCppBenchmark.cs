using TorchSharp.Modules;
using MLNetPeft.Runtime;
using System.Diagnostics;
using MLNetPeft.Architectures;
using MLNetPeft.BaseModel;
using MLNetPeft.Generation;
using MLNetPeft.Gguf;
using LlamaCppRunner = MLNetPeft.LlamaCpp.Tests.LlamaCpp;
using MLNetPeft.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Benchmarks;

/// <summary>
/// Generation speed of our TorchSharp decoder against llama.cpp (LLamaSharp's CPU backend) on the same model, same
/// machine, same run: prompt processing and greedy generation tokens/s at batch 1 on the F32 and Q8_0 GGUF files, and
/// ours at batch 8 and 16. Rounds alternate between the two, so machine noise hits both; the best round of each is kept.
/// Then where our per-token time goes: the forward pass at growing cache lengths, the KV-cache concatenation alone,
/// and what is left (logits to host, argmax, incremental detokenisation).
/// </summary>
internal static class LlamaCppBenchmark
{
    public static void Run(int rounds, int promptTokens = 128, int newTokens = 256)
    {
        int threads = torch.get_num_threads();
        Console.WriteLine($"llama.cpp vs ours: prompt {promptTokens} tokens, {newTokens} new tokens greedy, {threads} threads each, best of {rounds} alternating rounds");
        var tokenizer = TextTokenizer.FromPretrained(BundledBaseModel.Folder);
        var folder = Directory.CreateTempSubdirectory("mlnetpeft-llamacpp-bench-").FullName;
        try
        {
            var larger = new LlamaConfig
            {
                VocabSize = 2048, HiddenSize = 512, IntermediateSize = 1376, NumHiddenLayers = 8, NumAttentionHeads = 8, NumKeyValueHeads = 4,
                MaxPositionEmbeddings = 1024, TieWordEmbeddingsField = false, RmsNormEps = 1e-5,
            };
            foreach (var (name, create) in new (string, Func<CausalLanguageModel>)[]
            {
                ("bundled base model", () => PretrainedModels.LoadCausalLM(BundledBaseModel.Folder)),
                ("Llama 512×8 (random)", () => { var m = PretrainedModels.CreateCausalLM(larger); m.InitializeWeights(1); m.eval(); return m; }),
            })
            {
                using var model = create();
                Console.WriteLine();
                Console.WriteLine($"## {name}: {model.ParameterCount() / 1e6:F1} M parameters");
                var prompt = Enumerable.Range(0, promptTokens).Select(i => (i * 7919) % 2000 + 20).ToList();
                var f32 = Path.Combine(folder, "f32.gguf");
                var q8 = Path.Combine(folder, "q8.gguf");
                GgufModels.Export(model, tokenizer, f32, GgufFileType.F32);
                GgufModels.Export(model, tokenizer, q8, GgufFileType.Q8_0);
                using var llamaF32 = new LlamaCppRunner(f32, promptTokens + newTokens + 16, threads);
                using var llamaQ8 = new LlamaCppRunner(q8, promptTokens + newTokens + 16, threads);
                var generator = new TextGenerator(model, tokenizer);
                var options = new GenerationOptions { MaxNewTokens = newTokens, StopTokenIds = [] };

                var best = new Dictionary<string, (double Prefill, double Generate)>();
                void Keep(string key, double prefill, double generate)
                {
                    best[key] = best.TryGetValue(key, out var b) ? (Math.Max(b.Prefill, prefill), Math.Max(b.Generate, generate)) : (prefill, generate);
                }
                for (int round = 0; round < rounds; round++)
                {
                    foreach (var (key, llama) in new[] { ("llama.cpp F32", llamaF32), ("llama.cpp Q8_0", llamaQ8) })
                    {
                        var t = Stopwatch.StartNew();
                        llama.Prefill(prompt);
                        double prefill = t.Elapsed.TotalSeconds;
                        t.Restart();
                        llama.Greedy(prompt, newTokens);
                        double total = t.Elapsed.TotalSeconds;
                        Keep(key, promptTokens / prefill, (newTokens - 1) / (total - prefill));
                    }
                    foreach (int batch in new[] { 1, 8, 16 })
                    {
                        var prompts = Enumerable.Repeat((IReadOnlyList<int>)prompt, batch).ToList();
                        double prefill = OurPrefill(model, prompt, batch);
                        var t = Stopwatch.StartNew();
                        generator.GenerateFromIds(prompts, options);
                        double total = t.Elapsed.TotalSeconds;
                        Keep($"ours F32 batch {batch}", batch * promptTokens / prefill, batch * (newTokens - 1) / (total - prefill));
                    }
                }
                Console.WriteLine("| runtime | prompt tokens/s | generated tokens/s | generation vs llama.cpp F32 (batch 1) |");
                Console.WriteLine("|---|---|---|---|");
                double reference = best["llama.cpp F32"].Generate;
                foreach (var (key, (prefill, generate)) in best)
                    Console.WriteLine($"| {key} | {prefill:F0} | {generate:F1} | {generate / reference:F2}× |");
                Console.WriteLine($"ours / llama.cpp F32 at batch 1: prompt {best["ours F32 batch 1"].Prefill / best["llama.cpp F32"].Prefill:F2}×, generation {best["ours F32 batch 1"].Generate / reference:F2}×");
                Profile(model, prompt, newTokens, generator);
            }
        }
        finally { Directory.Delete(folder, recursive: true); }
    }

    /// <summary>Seconds for one forward pass over the prompt (batch rows of it) into a fresh cache: what generation spends before its first token.</summary>
    private static double OurPrefill(CausalLanguageModel model, IReadOnlyList<int> prompt, int batch)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var ids = tensor(prompt.Select(i => (long)i).ToArray()).unsqueeze(0).expand(batch, -1).contiguous();
        using var cache = model.CreateCache();
        var t = Stopwatch.StartNew();
        model.Forward(ids, cache: cache).select(1, -1).argmax(-1).data<long>().ToArray();
        return t.Elapsed.TotalSeconds;
    }

    /// <summary>
    /// Every linear layer of the stack once for a one-row input, in order, as a decoding step meets them (each weight
    /// out of cache when it is reached): through libtorch's <c>Linear.call</c> and through <see cref="SmallBatchLinear"/>.
    /// </summary>
    private static void LinearProfile(LlamaForCausalLM model)
    {
        using var _ = no_grad();
        var linears = model.Layers.SelectMany(l => new[] { l.SelfAttention.QProj, l.SelfAttention.KProj, l.SelfAttention.VProj, l.SelfAttention.OProj,
            l.Mlp.GateProj, l.Mlp.UpProj, l.Mlp.DownProj }).ToArray();
        using var scope = NewDisposeScope();
        var inputs = linears.Select(l => randn(1, 1, l.in_features)).ToArray();
        double Milliseconds(Func<Linear, Tensor, Tensor> apply)
        {
            const int repeats = 50;
            double best = double.MaxValue;
            for (int round = 0; round < 3; round++)
            {
                var t = Stopwatch.StartNew();
                for (int r = 0; r < repeats; r++)
                {
                    using var step = NewDisposeScope();
                    for (int i = 0; i < linears.Length; i++) apply(linears[i], inputs[i]);
                }
                best = Math.Min(best, t.Elapsed.TotalMilliseconds / repeats);
            }
            return best;
        }
        double libtorch = Milliseconds((l, x) => l.call(x)), ours = Milliseconds(SmallBatchLinear.Call);
        Console.WriteLine($"the {linears.Length} linear layers for one row, in order: libtorch {libtorch:F2} ms, SmallBatchLinear {ours:F2} ms ({libtorch / ours:F2}×)");
    }

    /// <summary>Our batch-1 per-token time split into the forward pass (at three cache lengths), the KV concatenation inside it, and the rest.</summary>
    private static void Profile(CausalLanguageModel model, IReadOnlyList<int> prompt, int newTokens, TextGenerator generator)
    {
        using var _ = no_grad();
        int layers = model.LayerCount;
        var config = (LlamaConfig)model.Config;
        Console.WriteLine("| cache length | forward ms/token | of which KV concatenation ms | concatenation share |");
        Console.WriteLine("|---|---|---|---|");
        double meanForward = 0;
        foreach (int length in new[] { prompt.Count, prompt.Count + newTokens / 2, prompt.Count + newTokens })
        {
            using var scope = NewDisposeScope();
            using var cache = model.CreateCache();
            var ids = tensor(Enumerable.Range(0, length).Select(i => (long)prompt[i % prompt.Count]).ToArray()).unsqueeze(0);
            model.Forward(ids, cache: cache);
            var one = tensor(new long[] { prompt[0] }).unsqueeze(0);
            const int repeats = 32;
            // Untimed steps first: the first calls after a new cache pay allocation and thread wake-up, not the forward pass.
            for (int r = 0; r < 4; r++)
            {
                using var warm = NewDisposeScope();
                model.Forward(one, cache: cache).select(1, -1).argmax(-1).item<long>();
            }
            var t = Stopwatch.StartNew();
            for (int r = 0; r < repeats; r++)
            {
                using var step = NewDisposeScope();
                model.Forward(one, cache: cache).select(1, -1).argmax(-1).item<long>();
            }
            double forwardMs = t.Elapsed.TotalMilliseconds / repeats;
            // The cache grew by `repeats` positions during the timing; the concatenation is timed at the middle length.
            var key = randn(1, config.KeyValueHeads, length + repeats / 2, config.HeadDim);
            var step1 = randn(1, config.KeyValueHeads, 1, config.HeadDim);
            t.Restart();
            for (int r = 0; r < repeats; r++)
                for (int l = 0; l < 2 * layers; l++) cat([key, step1], 2).Dispose();
            double catMs = t.Elapsed.TotalMilliseconds / repeats;
            Console.WriteLine($"| {length} | {forwardMs:F2} | {catMs:F3} | {catMs / forwardMs:P1} |");
            meanForward += forwardMs / 3;
        }
        var options = new GenerationOptions { MaxNewTokens = newTokens, StopTokenIds = [] };
        double prefill = OurPrefill(model, prompt, 1);
        var total = Stopwatch.StartNew();
        generator.GenerateFromIds([prompt], options);
        double perToken = (total.Elapsed.TotalSeconds - prefill) * 1000 / (newTokens - 1);
        // The fixed cost of one eager TorchSharp op (a small add, its dispose-scope bookkeeping included).
        using (var scope = NewDisposeScope())
        {
            var a = randn(1, 1, config.HiddenSize);
            var clock = Stopwatch.StartNew();
            const int ops = 20000;
            for (int i = 0; i < ops; i++) { using var step = NewDisposeScope(); a.add(a); }
            double opMicroseconds = clock.Elapsed.TotalMilliseconds * 1000 / ops;
            Console.WriteLine($"one small eager op costs {opMicroseconds:F1} µs here: the forward pass's {meanForward:F2} ms are the time of {meanForward * 1000 / opMicroseconds:F0} such ops ({model.LayerCount} layers)");
        }
        LinearProfile((LlamaForCausalLM)model);
        Console.WriteLine($"per generated token: {perToken:F2} ms in all, {meanForward:F2} ms of it the forward pass (mean of the three lengths), {perToken - meanForward:F2} ms the rest (logits to host, argmax, detokenising, stop checks)");
    }
}
