using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using MLNetPeft.Checkpoints;
using MLNetPeft.Runtime;
using MLNetPeft.Tokenization;
using static TorchSharp.torch;

namespace MLNetPeft.Gguf;

/// <summary>
/// Causal LMs of the Llama family to and from GGUF, the format of llama.cpp (and of LLamaSharp and Ollama, which run
/// on it). Export follows llama.cpp's <c>convert_hf_to_gguf.py</c>; import undoes it into an HF checkpoint folder that
/// every part of this library loads (and fine-tunes).
/// </summary>
public static class GgufModels
{
    /// <summary>
    /// Writes <paramref name="model"/> with <paramref name="tokenizer"/> as a GGUF v3 file, atomically: the Llama family
    /// (llama, mistral, qwen2) and GPT-2. Matrices are stored as <paramref name="fileType"/> (Q8_0 falls back to F16 for a
    /// matrix whose rows are not a multiple of 32, as the converter does), vectors (norms, biases) always in F32.
    /// Adapters attached to the model are not written (see the LoRA adapter export); a merged adapter is part of the weights.
    /// </summary>
    /// <exception cref="NotSupportedException">Another architecture, or a tokenizer, rope scaling or variant llama.cpp cannot represent.</exception>
    public static void Export(CausalLanguageModel model, TextTokenizer tokenizer, string path, GgufFileType fileType = GgufFileType.F16, string? name = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        if (model.VirtualPrompt is { Enabled: true })
            throw new NotSupportedException("The model has a virtual prompt (prompt or prefix tuning), which GGUF cannot hold.");
        string arch = model.Config switch
        {
            LlamaConfig llama => LlamaGguf.Architecture(llama),
            Gpt2Config => Gpt2Gguf.Architecture,
            var other => throw new NotSupportedException($"GGUF export covers the Llama family (llama, mistral, qwen2) and GPT-2; this model is '{other.ModelType}'."),
        };
        var writer = new GgufWriter();
        writer.Add("general.architecture", GgufValue.Of(arch))
            .Add("general.type", GgufValue.Of("model"))
            .Add("general.name", GgufValue.Of(name ?? (model.SourceFolder is { } folder ? Path.GetFileName(folder.TrimEnd(Path.DirectorySeparatorChar)) : arch)))
            .Add("general.file_type", GgufValue.Of((uint)fileType))
            .Add("general.quantization_version", GgufValue.Of(2u));

        using var scope = NewDisposeScope();
        var state = model.state_dict();
        Tensor Weight(string hfName) => state.TryGetValue(hfName, out var t) ? t.detach() : throw new InvalidOperationException($"The model has no weight '{hfName}'.");
        if (model.Config is LlamaConfig config)
        {
            LlamaGguf.AddHyperparameters(writer, config, arch);
            GgufTokenizer.AddMetadata(writer, tokenizer, config.VocabSize);
            foreach (var hfName in LlamaGguf.WeightNames(config))
            {
                var tensor = Weight(hfName);
                if (LlamaGguf.PermutedHeads(hfName, config, arch) is { } heads) tensor = LlamaGguf.ToInterleavedRows(tensor, heads);
                writer.AddTensor(LlamaGguf.GgufName(hfName)!, tensor, StoredType(tensor, fileType));
            }
            if (LlamaGguf.RopeFrequencyFactors(config) is { } factors) writer.AddTensor(LlamaGguf.RopeFreqsTensor, tensor(factors), GgmlType.F32);
        }
        else
        {
            var gpt2 = (Gpt2Config)model.Config;
            Gpt2Gguf.AddHyperparameters(writer, gpt2);
            GgufTokenizer.AddMetadata(writer, tokenizer, gpt2.VocabSize);
            foreach (var (hfName, ggufName, transpose) in Gpt2Gguf.Weights(gpt2))
            {
                var tensor = Weight(hfName);
                if (transpose) tensor = tensor.t().contiguous();
                writer.AddTensor(ggufName, tensor, StoredType(tensor, fileType));
            }
        }
        writer.Save(path);
    }

    // As the converter stores them: vectors in F32, matrices in the file's type (Q8_0 only where rows fill whole blocks).
    private static GgmlType StoredType(Tensor tensor, GgufFileType fileType) => tensor.dim() == 1 ? GgmlType.F32 : fileType switch
    {
        GgufFileType.F32 => GgmlType.F32,
        GgufFileType.Q8_0 when tensor.shape[^1] % GgmlCodec.Q8BlockElements == 0 => GgmlType.Q8_0,
        _ => GgmlType.F16,
    };

    /// <summary>Loads the HF checkpoint folder <paramref name="checkpointFolder"/> (model and tokenizer) and exports it.</summary>
    public static void Export(string checkpointFolder, string path, GgufFileType fileType = GgufFileType.F16)
    {
        using var model = PretrainedModels.LoadCausalLM(checkpointFolder);
        Export(model, TextTokenizer.FromPretrained(checkpointFolder), path, fileType);
    }

    /// <summary>
    /// Converts a GGUF file of the Llama family or GPT-2 (F32, F16, BF16 or Q8_0 tensors) into an HF checkpoint folder:
    /// config.json, model.safetensors in float32 (layout transforms of the converter undone: q/k rows of <c>llama</c>,
    /// GPT-2's transposed Conv1D weights) and tokenizer.json or tokenizer.model + tokenizer_config.json.
    /// </summary>
    /// <exception cref="InvalidDataException">The file is malformed or its tensors do not fit its hyperparameters.</exception>
    /// <exception cref="NotSupportedException">Another architecture, a tensor type this library cannot read (K-quants, I-quants), or a tensor with no HF counterpart.</exception>
    public static void ImportToFolder(string ggufPath, string folder)
    {
        TorchRuntime.EnsureAvailable();
        using var file = GgufFile.Open(ggufPath);
        foreach (var t in file.Tensors)
            if (!GgmlTypes.CanDecode(t.Type))
                throw new NotSupportedException($"GGUF file '{file.Path}': tensor '{t.Name}' is of type {t.Type}, which this library cannot read; supported: F32, F16, BF16 and Q8_0.");
        var family = ReadFamily(file);
        var config = family.Config;
        foreach (var t in file.Tensors)
            if (!family.NotWeights.Contains(t.Name) && family.HfName(t.Name) is null)
                throw new NotSupportedException($"GGUF file '{file.Path}': tensor '{t.Name}' has no counterpart in the {family.Architecture} architecture's HF layout.");
        var tokens = file.Require("tokenizer.ggml.tokens").AsStringArray("tokenizer.ggml.tokens");
        long vocab = file.Find($"{family.Architecture}.vocab_size") is { } v ? v.AsInteger($"{family.Architecture}.vocab_size") : tokens.Length;
        if (vocab != tokens.Length)
            throw new InvalidDataException($"GGUF file '{file.Path}' says {family.Architecture}.vocab_size is {vocab} but lists {tokens.Length} tokens.");
        config.VocabSize = tokens.Length;
        config.BosTokenId = file.FindTokenId("tokenizer.ggml.bos_token_id", tokens.Length);
        config.PadTokenId = file.FindTokenId("tokenizer.ggml.padding_token_id", tokens.Length);
        if (file.FindTokenId("tokenizer.ggml.eos_token_id", tokens.Length) is { } eos) config.EosTokenIdNode = JsonValue.Create(eos);
        try { config.Validate(); }
        catch (InvalidDataException e) { throw new InvalidDataException($"GGUF file '{file.Path}': {e.Message}", e); }

        using var weights = new HfNamedWeights(file, family);
        PretrainedModels.CheckSizes(config, weights, file.Path);
        using var model = PretrainedModels.CreateCausalLM(config);
        var report = model.LoadWeights(weights, file.Path);
        if (report.UnusedCheckpointKeys.Count > 0)
            throw new InvalidDataException($"GGUF file '{file.Path}' has tensors its hyperparameters leave no place for: {string.Join(", ", report.UnusedCheckpointKeys.Take(5).Select(n => weights.GgufName(n)))}.");
        // Written into a staging folder and checked (the tokenizer must load) before any file reaches the destination.
        var target = Path.GetFullPath(folder);
        var staging = Path.Combine(Path.GetDirectoryName(target.TrimEnd(Path.DirectorySeparatorChar))!, $".{Path.GetFileName(target.TrimEnd(Path.DirectorySeparatorChar))}.{Guid.NewGuid():N}.tmp");
        try
        {
            model.SavePretrained(staging);
            GgufTokenizer.WritePretrainedFiles(file, staging);
            TextTokenizer.FromPretrained(staging);
            Directory.CreateDirectory(target);
            foreach (var written in Directory.GetFiles(staging))
                File.Move(written, Path.Combine(target, Path.GetFileName(written)), overwrite: true);
        }
        finally
        {
            try { Directory.Delete(staging, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>
    /// How one architecture's GGUF tensors map onto HF's: the config, llama.cpp name → HF name, which tensors HF stores
    /// transposed, any other layout transform of the converter undone (disposing the stored tensor), and tensors that are
    /// not weights of the HF model.
    /// </summary>
    private sealed record Family(string Architecture, ModelConfig Config, Func<string, string?> HfName, Func<string, bool> Transposes,
        Func<string, Tensor, Tensor> ToHfLayout, IReadOnlySet<string> NotWeights);

    private static Family ReadFamily(GgufFile file)
    {
        string arch = file.Require("general.architecture").AsString("general.architecture");
        if (arch == Gpt2Gguf.Architecture)
        {
            var gpt2 = Gpt2Gguf.ReadConfig(file);
            var names = Gpt2Gguf.HfNames(gpt2);
            RequireTiedGpt2Head(file);
            return new Family(arch, gpt2, n => names.TryGetValue(n, out var hf) ? hf.Hf : null, n => names[n].Transpose,
                (_, stored) => stored, new HashSet<string> { Gpt2Gguf.TiedOutput });
        }
        var llama = LlamaGguf.ReadConfig(file);
        arch = LlamaGguf.Architecture(llama);
        return new Family(arch, llama, LlamaGguf.HfName, _ => false, (n, stored) =>
        {
            if (LlamaGguf.PermutedHeads(LlamaGguf.HfName(n)!, llama, arch) is not { } heads) return stored;
            using (stored)
            {
                if (stored.shape[0] % (2 * heads) != 0)
                    throw new InvalidDataException($"GGUF file '{file.Path}': tensor '{n}' has {stored.shape[0]} rows, not a multiple of 2 × {heads} heads.");
                return LlamaGguf.FromInterleavedRows(stored, heads);
            }
        }, new HashSet<string> { LlamaGguf.RopeFreqsTensor });   // read into the config's rope_scaling
    }

    // HF's GPT2LMHeadModel always ties its head to the embedding; llama.cpp's converter writes the head out as a copy.
    private static void RequireTiedGpt2Head(GgufFile file)
    {
        if (!file.Contains(Gpt2Gguf.TiedOutput)) return;
        const string embedding = "token_embd.weight";
        if (!file.Contains(embedding) || !file.ShapeOf(embedding).SequenceEqual(file.ShapeOf(Gpt2Gguf.TiedOutput)))
            throw new InvalidDataException($"GGUF file '{file.Path}': '{Gpt2Gguf.TiedOutput}' has no '{embedding}' of its shape to be tied to.");
        using var head = file.ReadTensor(Gpt2Gguf.TiedOutput);
        using var tokens = file.ReadTensor(embedding);
        if (!head.bytes.SequenceEqual(tokens.bytes))
            throw new NotSupportedException($"GGUF file '{file.Path}': '{Gpt2Gguf.TiedOutput}' differs from '{embedding}'; HF's GPT2LMHeadModel ties its head to the embedding, so a GPT-2 with its own head cannot be imported.");
    }

    /// <summary>A GGUF file's tensors under their HF names, in HF's layout.</summary>
    private sealed class HfNamedWeights(GgufFile file, Family family) : ITensorReader
    {
        private readonly Dictionary<string, string> _ggufOf = file.Tensors.Where(t => !family.NotWeights.Contains(t.Name))
            .ToDictionary(t => family.HfName(t.Name)!, t => t.Name, StringComparer.Ordinal);

        public string GgufName(string hfName) => _ggufOf[hfName];
        public string Source => file.Path;
        public IReadOnlyCollection<string> TensorNames => _ggufOf.Keys;
        public bool Contains(string name) => _ggufOf.ContainsKey(name);
        public long[] ShapeOf(string name)
        {
            var shape = file.ShapeOf(_ggufOf[name]);
            return shape.Length == 2 && family.Transposes(_ggufOf[name]) ? [shape[1], shape[0]] : shape;
        }
        public ScalarType DTypeOf(string name) => file.DTypeOf(_ggufOf[name]);

        public Tensor ReadTensor(string name)
        {
            string gguf = _ggufOf[name];
            var stored = file.ReadTensor(gguf);
            if (family.Transposes(gguf))
            {
                using var linearLayout = stored;
                stored = linearLayout.t().contiguous();
            }
            return family.ToHfLayout(gguf, stored);
        }

        public void ReadInto(string name, Tensor destination)
        {
            using var value = ReadTensor(name);
            using var _ = no_grad();
            destination.copy_(value);
        }

        public void Dispose() { }
    }
}
