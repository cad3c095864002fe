using System.IO.Compression;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.Architectures;
using MLNetPeft.Generation;
using MLNetPeft.ML.Generation;
using MLNetPeft.Tokenization;
using MLNetPeft.Tuners;
using MLNetPeft.Tuners.Lora;
using static TorchSharp.torch;

/// <summary>
/// FreshProcess --malformed-inputs &lt;scratch folder&gt;: feeds damaged files to the loaders a user calls (ML.NET model
/// zips with a GenerateText transformer, checkpoint folders with a damaged config.json or tokenizer file, PEFT adapter
/// folders) and prints one JSON summary: how each case ended, and the process's peak resident memory during the
/// cases above what it held before them. Run in a process of its own so that a crash is seen as one and the peak
/// belongs to these loads alone (MalformedInputFuzzTests asserts on the summary).
/// </summary>
internal static class MalformedInputs
{
    private static readonly GenerationOptions Greedy = new() { MaxNewTokens = 6 };

    private sealed class Input
    {
        public string Prompt { get; set; } = "";
    }

    private static readonly Input[] Rows = [new() { Prompt = "ab" }, new() { Prompt = "xyz" }];

    /// <summary>What a case may end in: the loaded thing works as before, or one of these exceptions names the file.</summary>
    private static readonly Type[] Documented = [typeof(InvalidDataException), typeof(FormatException), typeof(FileNotFoundException), typeof(NotSupportedException)];

    private sealed record Case(string Kind, string Description, string Outcome, bool Acceptable);

    public static int Run(string scratch)
    {
        Directory.CreateDirectory(scratch);
        var checkpoint = Directory.CreateDirectory(Path.Combine(scratch, "checkpoint")).FullName;
        using (var tiny = Randomized(new LlamaForCausalLM(TinyLlama()), 7)) tiny.SavePretrained(checkpoint);
        WriteTokenizer(checkpoint);
        var adapter = Directory.CreateDirectory(Path.Combine(scratch, "adapter")).FullName;
        using (var model = PretrainedModels.LoadCausalLM(checkpoint))
        {
            var lora = LoraModel.Apply(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["q_proj", "v_proj"] }, seed: 3);
            PeftAdapterFiles.Save(adapter, lora);
        }
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows);
        var zipPath = Path.Combine(scratch, "model.zip");
        IReadOnlyList<string> expected;
        using (var model = PretrainedModels.LoadCausalLM(checkpoint))
        {
            using var fitted = ml.Transforms.Text.GenerateText(model, TextTokenizer.FromPretrained(checkpoint), options: Greedy).Fit(data);
            ml.Model.Save(fitted, data.Schema, zipPath);
            expected = Generate(fitted, data);
        }

        GC.Collect();
        GC.WaitForPendingFinalizers();
        File.WriteAllText("/proc/self/clear_refs", "5");   // peak resident size := current
        long before = StatusBytes("VmRSS");
        var random = new Random(20261201);
        var cases = new List<Case>();
        cases.AddRange(ZipCases(zipPath, expected, data, scratch, random));
        cases.AddRange(FolderCases("config.json", checkpoint, scratch, random, 220, folder => ForwardOnce(PretrainedModels.LoadCausalLM(folder))));
        foreach (var (file, count) in new[] { ("vocab.json", 90), ("merges.txt", 40), ("tokenizer_config.json", 90) })
            cases.AddRange(FolderCases(file, checkpoint, scratch, random, count, folder => EncodeOnce(TextTokenizer.FromPretrained(folder))));
        cases.AddRange(FolderCases("adapter_config.json", adapter, scratch, random, 200, folder => ApplyAdapter(checkpoint, folder)));
        cases.AddRange(FolderCases("adapter_model.safetensors", adapter, scratch, random, 60, folder => ApplyAdapter(checkpoint, folder)));
        long peak = StatusBytes("VmHWM");

        var summary = new
        {
            cases = cases.Count,
            byKind = cases.GroupBy(c => c.Kind).ToDictionary(g => g.Key,
                g => g.GroupBy(c => c.Outcome.Split(':')[0]).ToDictionary(o => o.Key, o => o.Count())),
            unacceptable = cases.Where(c => !c.Acceptable).DistinctBy(c => c.Kind + c.Outcome[..Math.Min(c.Outcome.Length, 90)]).Take(40).Select(c => $"{c.Kind} [{c.Description}]: {c.Outcome}").ToList(),
            unacceptableCount = cases.Count(c => !c.Acceptable),
            residentBefore = before,
            peakResident = peak,
        };
        Console.WriteLine(JsonSerializer.Serialize(summary));
        return 0;
    }

    /// <summary>Damaged copies of the model zip: whole-file bit flips and truncations, and per stream: missing, empty, cut, flipped.</summary>
    private static IEnumerable<Case> ZipCases(string zipPath, IReadOnlyList<string> expected, IDataView data, string scratch, Random random)
    {
        var bytes = File.ReadAllBytes(zipPath);
        var path = Path.Combine(scratch, "damaged.zip");
        Case Try(string description, Action write)
        {
            write();
            var outcome = Outcome("zip", () =>
            {
                var loaded = new MLContext(seed: 1).Model.Load(path, out _);
                try { return Generate(loaded, data).SequenceEqual(expected) ? null : "loaded and generated different text"; }
                finally { (loaded as IDisposable)?.Dispose(); }
            }, ["zip", "model file", "archive", "assembly", "stream"]);
            File.Delete(path);
            return new Case("model zip", description, outcome.Text, outcome.Acceptable);
        }
        for (int i = 0; i < 240; i++)
        {
            int flips = i % 3 == 0 ? 1 : i % 3 == 1 ? 8 : 64;
            yield return Try($"{flips} bits flipped", () =>
            {
                var damaged = (byte[])bytes.Clone();
                for (int f = 0; f < flips; f++) damaged[random.Next(damaged.Length)] ^= (byte)(1 << random.Next(8));
                File.WriteAllBytes(path, damaged);
            });
        }
        for (int i = 0; i < 40; i++)
        {
            int length = random.Next(bytes.Length);
            yield return Try($"cut to {length} bytes", () => File.WriteAllBytes(path, bytes[..length]));
        }
        List<string> entries;
        using (var zip = ZipFile.OpenRead(zipPath)) entries = zip.Entries.Select(e => e.FullName).ToList();
        foreach (var entry in entries)
        {
            byte[] content;
            using (var zip = ZipFile.OpenRead(zipPath)) using (var s = zip.GetEntry(entry)!.Open()) { using var m = new MemoryStream(); s.CopyTo(m); content = m.ToArray(); }
            var variants = new List<(string, byte[]?)> { ("missing", null), ("empty", []) };
            foreach (var _ in Enumerable.Range(0, 3)) { int cut = random.Next(Math.Max(content.Length, 1)); variants.Add(($"cut to {cut}", content[..cut])); }
            foreach (var flips in new[] { 1, 1, 1, 4, 4, 16 })
            {
                if (content.Length == 0) break;
                var damaged = (byte[])content.Clone();
                for (int f = 0; f < flips; f++) damaged[random.Next(damaged.Length)] ^= (byte)(1 << random.Next(8));
                variants.Add(($"{flips} bits flipped", damaged));
            }
            variants.Add(("one byte longer", [.. content, 0]));
            foreach (var (what, replacement) in variants)
                yield return Try($"{entry} {what}", () =>
                {
                    File.WriteAllBytes(path, bytes);
                    using var zip = ZipFile.Open(path, ZipArchiveMode.Update);
                    zip.GetEntry(entry)!.Delete();
                    if (replacement is null) return;
                    using var s = zip.CreateEntry(entry).Open();
                    s.Write(replacement);
                });
        }
    }

    /// <summary>Copies of <paramref name="source"/> in which <paramref name="file"/> is damaged: raw (bit flips, cuts, missing) or, for JSON, a value replaced.</summary>
    private static IEnumerable<Case> FolderCases(string file, string source, string scratch, Random random, int count, Action<string> load)
    {
        var original = File.ReadAllBytes(Path.Combine(source, file));
        bool json = file.EndsWith(".json", StringComparison.Ordinal);
        for (int i = 0; i < count; i++)
        {
            var folder = Path.Combine(scratch, "case");
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
            Directory.CreateDirectory(folder);
            foreach (var f in Directory.GetFiles(source)) File.Copy(f, Path.Combine(folder, Path.GetFileName(f)));
            var target = Path.Combine(folder, file);
            string description;
            if (i == 0) { File.Delete(target); description = "missing"; }
            else if (i == 1) { File.WriteAllBytes(target, []); description = "empty"; }
            else if (json && i % 2 == 0)
            {
                (description, var text) = ReplaceValue(Encoding.UTF8.GetString(original), random);
                File.WriteAllText(target, text);
            }
            else
                description = RawDamage(original, target, random);
            var outcome = Outcome(file, () => { load(folder); return null; }, [file, Path.GetFileName(folder), folder]);
            yield return new Case(file, description, outcome.Text, outcome.Acceptable);
        }
    }

    private static string RawDamage(byte[] original, string target, Random random)
    {
        var damaged = (byte[])original.Clone();
        switch (random.Next(3))
        {
            case 0:
                int flips = 1 << random.Next(4);
                for (int f = 0; f < flips; f++) damaged[random.Next(damaged.Length)] ^= (byte)(1 << random.Next(8));
                File.WriteAllBytes(target, damaged);
                return $"{flips} bits flipped";
            case 1:
                int cut = random.Next(original.Length);
                File.WriteAllBytes(target, original[..cut]);
                return $"cut to {cut} bytes";
            default:
                int at = random.Next(original.Length);
                File.WriteAllBytes(target, [.. original[..at], (byte)random.Next(256), .. original[at..]]);
                return $"a byte inserted at {at}";
        }
    }

    private static readonly JsonNode?[] Nasty =
    [
        -1, 0, 1, 2, 3, 7, 1 << 16, int.MaxValue, 1L << 32, long.MaxValue, 1e300, -1e300, 0.5, "", "x", "float64", "llama", "gpt2",
        true, false, null, new JsonArray(), new JsonObject(), new JsonArray(1, 2), new string('a', 10_000),
    ];

    /// <summary>The JSON with one value (anywhere in it) replaced by an extreme or mistyped one.</summary>
    private static (string Description, string Text) ReplaceValue(string text, Random random)
    {
        var root = JsonNode.Parse(text)!;
        var slots = new List<(JsonNode Parent, string? Key, int Index, string Path)>();
        void Walk(JsonNode node, string path)
        {
            if (node is JsonObject o) foreach (var (k, v) in o.ToList()) { slots.Add((o, k, -1, path + "." + k)); if (v is not null) Walk(v, path + "." + k); }
            if (node is JsonArray a) for (int j = 0; j < a.Count; j++) { slots.Add((a, null, j, $"{path}[{j}]")); if (a[j] is { } v) Walk(v, $"{path}[{j}]"); }
        }
        Walk(root, "$");
        var (parent, key, index, where) = slots[random.Next(slots.Count)];
        var value = Nasty[random.Next(Nasty.Length)]?.DeepClone();
        if (key is not null) parent.AsObject()[key] = value;
        else parent.AsArray()[index] = value;
        var shown = value?.ToJsonString() ?? "null";
        return ($"{where} = {(shown.Length > 20 ? shown[..20] + "…" : shown)}", root.ToJsonString());
    }

    private static (string Text, bool Acceptable) Outcome(string what, Func<string?> run, IReadOnlyList<string> names)
    {
        try
        {
            var wrong = run();
            return wrong is null ? ("loaded", true) : ($"SILENT: {wrong}", false);
        }
        catch (Exception e)
        {
            var chain = new List<Exception>();
            for (var x = e; x is not null; x = x.InnerException) chain.Add(x);
            // ML.NET reads the zip container and its own streams (header, schema, loader signature) before any code of
            // ours runs; what it and System.IO.Compression throw there is theirs, and the zip is the file the caller named.
            if (what == "zip" && !chain.Any(x => x.StackTrace?.Contains(" MLNetPeft.", StringComparison.Ordinal) == true) &&
                chain.FirstOrDefault(x => x is InvalidDataException or FormatException or IOException) is { } container)
                return ($"ML.NET container: {container.GetType().Name}: {Short(container.Message)}", true);
            var documented = chain.FirstOrDefault(x => Documented.Contains(x.GetType()));
            if (documented is null) return ($"UNDOCUMENTED: {string.Join(" <- ", chain.Select(x => $"{x.GetType().Name}: {Short(x.Message)}"))}", false);
            bool named = chain.Any(x => names.Any(n => x.Message.Contains(n, StringComparison.OrdinalIgnoreCase)));
            return named ? ($"{documented.GetType().Name}: {Short(documented.Message)}", true)
                : ($"UNNAMED: {string.Join(" <- ", chain.Select(x => $"{x.GetType().Name}: {Short(x.Message)}"))} at {Environment.GetEnvironmentVariable("FUZZ_TRACE") switch { null => "", _ => chain[^1].StackTrace }}", false);
        }
    }

    private static string Short(string m) => m.Length > 160 ? m[..160] : m;

    private static IReadOnlyList<string> Generate(ITransformer model, IDataView data) =>
        model.Transform(data).GetColumn<string>("GeneratedText").ToList();

    private static void ForwardOnce(CausalLanguageModel model)
    {
        using var _ = model;
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        model.Forward(tensor(new long[] { 1, 2, 3, 4 }).unsqueeze(0));
    }

    private static void EncodeOnce(TextTokenizer tokenizer) => tokenizer.Decode(tokenizer.Encode("hello, world 42"));

    private static void ApplyAdapter(string checkpoint, string adapterFolder)
    {
        using var model = PretrainedModels.LoadCausalLM(checkpoint);
        PeftAdapterFiles.Load(model, adapterFolder, out _);
        ForwardOnce(model);
    }

    private static LlamaConfig TinyLlama() => new()
    {
        VocabSize = 101, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
        MaxPositionEmbeddings = 64, RopeTheta = 10000, RmsNormEps = 1e-6,
    };

    private static T Randomized<T>(T model, ulong seed) where T : PretrainedModule
    {
        var generator = new Generator(seed);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using var scale = TorchSharp.ScalarExtensionMethods.ToScalar(0.3);
        foreach (var (_, p) in model.named_parameters()) p.copy_(randn(p.shape, generator: generator).mul_(scale));
        return model;
    }

    /// <summary>A byte-level BPE vocabulary of the printable ASCII characters (no merges).</summary>
    private static void WriteTokenizer(string folder)
    {
        var vocab = new JsonObject { ["Ċ"] = 0, ["Ġ"] = 1 };
        int id = 2;
        for (char c = '!'; c <= '~'; c++) vocab[c.ToString()] = id++;
        vocab["<|endoftext|>"] = id++;
        vocab["he"] = id++;
        vocab["ll"] = id;
        File.WriteAllText(Path.Combine(folder, "vocab.json"), vocab.ToJsonString());
        File.WriteAllText(Path.Combine(folder, "merges.txt"), "#version: 0.2\nh e\nl l\n");
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), """{"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "add_prefix_space": false}""");
    }

    private static long StatusBytes(string field)
    {
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith(field + ":", StringComparison.Ordinal));
        return long.Parse(line.Split(':')[1].Trim().Split(' ')[0]) * 1024;
    }
}
