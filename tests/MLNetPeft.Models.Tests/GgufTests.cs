using System.Buffers.Binary;
using System.Text;
using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using MLNetPeft.Gguf;
using MLNetPeft.Tokenization;
using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

public class GgufTests
{
    private static readonly string[] Texts = ["hello world", "Numbers 123, symbols #!", "two\nlines", ""];

    private static (CausalLanguageModel Model, TextTokenizer Tokenizer) Tiny(ModelConfig config) =>
        (TinyModels.Randomize(PretrainedModels.CreateCausalLM(config), 3), TinyTokenizer.Create());

    public static IEnumerable<object[]> Families() => [["llama"], ["llama-tied"], ["llama-rope-llama3"], ["qwen2"], ["mistral"], ["gpt2"]];

    private static RopeScaling Llama3(double factor, double low, double high, int context) =>
        new() { RopeType = "llama3", Factor = factor, LowFreqFactor = low, HighFreqFactor = high, OriginalMaxPositionEmbeddings = context };

    private static ModelConfig Config(string family) => family switch
    {
        "gpt2" => Gpt2(),
        "llama" => TinyModels.Llama(),
        "llama-rope-llama3" => TinyModels.Llama(Llama3(8, 1, 4, 16)),
        "llama-tied" => TinyModels.Llama(tie: true),
        "mistral" => TinyModels.Llama(modelType: "mistral", slidingWindow: 32),
        _ => TinyModels.Qwen2(),
    };

    [Theory]
    [MemberData(nameof(Families))]
    public void F32_export_then_import_is_bit_identical(string family)
    {
        using var dir = new TempFolder();
        var (model, tokenizer) = Tiny(Config(family));
        using var _ = model;
        GgufModels.Export(model, tokenizer, dir.File("a.gguf"), GgufFileType.F32, name: "tiny");
        GgufModels.ImportToFolder(dir.File("a.gguf"), dir.File("hf"));

        using var imported = PretrainedModels.LoadCausalLM(dir.File("hf"));
        var original = model.state_dict();
        var back = imported.state_dict();
        Assert.Equal(original.Keys.Order(), back.Keys.Order());
        foreach (var (name, t) in original) TensorAssert.BitIdentical(t, back[name], name);
        var scaling = (imported.Config as LlamaConfig)?.RopeScaling;
        Assert.Equal((model.Config as LlamaConfig)?.RopeScaling?.Kind, scaling?.Kind);
        Assert.Equal(model.Config.GetType(), imported.Config.GetType());
        if (scaling?.Kind == "llama3")   // llama.cpp's rope_freqs.weight read back into HF's parameters
            Assert.Equal((8.0, 1.0, 4.0, 16), (scaling.Factor!.Value, scaling.LowFreqFactor!.Value, scaling.HighFreqFactor!.Value, scaling.OriginalMaxPositionEmbeddings!.Value));
        var importedTokenizer = TextTokenizer.FromPretrained(dir.File("hf"));
        foreach (var text in Texts) Assert.Equal(tokenizer.Encode(text), importedTokenizer.Encode(text));
        Assert.Equal(tokenizer.EosId, importedTokenizer.EosId);

        // And the imported folder exports to the same bytes.
        GgufModels.Export(dir.File("hf"), dir.File("b.gguf"), GgufFileType.F32);
        // Only general.name differs ("tiny" vs the folder name "hf").
        Assert.True(SameExceptName(dir.File("a.gguf"), dir.File("b.gguf")));
    }

    private static bool SameExceptName(string a, string b)
    {
        using var fa = GgufFile.Open(a);
        using var fb = GgufFile.Open(b);
        foreach (var (key, value) in fa.Metadata)
        {
            if (key == "general.name") continue;
            var other = fb.Require(key);
            if (value.Value is Array x ? !x.Cast<object>().SequenceEqual(((Array)other.Value).Cast<object>()) : !value.Value.Equals(other.Value)) return false;
        }
        if (fa.Metadata.Count != fb.Metadata.Count) return false;
        foreach (var t in fa.Tensors)
        {
            using var x = fa.ReadTensor(t.Name);
            using var y = fb.ReadTensor(t.Name);
            if (!x.bytes.SequenceEqual(y.bytes) || fb.Info(t.Name).Type != t.Type) return false;
        }
        return fa.Tensors.Count == fb.Tensors.Count;
    }

    [Theory]
    [InlineData(GgufFileType.F16)]
    [InlineData(GgufFileType.Q8_0)]
    public void Quantised_files_import_to_the_rounded_weights(GgufFileType fileType)
    {
        using var dir = new TempFolder();
        var (model, tokenizer) = Tiny(TinyModels.Qwen2());   // intermediate 48: down_proj rows are not a multiple of 32, so Q8_0 falls back to F16 there
        using var _ = model;
        GgufModels.Export(model, tokenizer, dir.File("m.gguf"), fileType);
        using (var file = GgufFile.Open(dir.File("m.gguf")))
        {
            Assert.Equal(GgmlType.F32, file.Info("blk.0.attn_norm.weight").Type);
            Assert.Equal(GgmlType.F32, file.Info("blk.0.attn_q.bias").Type);
            Assert.Equal(fileType == GgufFileType.F16 ? GgmlType.F16 : GgmlType.Q8_0, file.Info("blk.0.attn_q.weight").Type);
            Assert.Equal(GgmlType.F16, file.Info("blk.0.ffn_down.weight").Type);
            Assert.Equal((uint)fileType, file.Require("general.file_type").Value);
        }
        GgufModels.ImportToFolder(dir.File("m.gguf"), dir.File("hf"));
        using var imported = PretrainedModels.LoadCausalLM(dir.File("hf"));
        var back = imported.state_dict();
        foreach (var (name, t) in model.state_dict())
        {
            using var scope = NewDisposeScope();
            var expected = t;
            if (t.dim() == 2)
            {
                bool q8 = fileType == GgufFileType.Q8_0 && t.shape[1] % 32 == 0;
                if (q8)
                {
                    var values = t.data<float>().ToArray();
                    var blocks = new byte[values.Length / 32 * 34];
                    GgmlCodec.QuantizeQ8_0(values, blocks);
                    GgmlCodec.DequantizeQ8_0(blocks, values);
                    expected = tensor(values).reshape(t.shape);
                }
                else expected = t.to(ScalarType.Float16).to(ScalarType.Float32);
            }
            TensorAssert.BitIdentical(expected, back[name], name);
        }
    }

    [Fact]
    public void Q8_0_follows_ggml_reference_rounding()
    {
        var values = new float[32];
        for (int i = 0; i < 32; i++) values[i] = i - 15.5f;   // max |x| = 15.5 → d = 15.5 / 127
        var blocks = new byte[34];
        GgmlCodec.QuantizeQ8_0(values, blocks);
        Assert.Equal((Half)(15.5f / 127f), BinaryPrimitives.ReadHalfLittleEndian(blocks));
        Assert.Equal(-127, (sbyte)blocks[2]);
        Assert.Equal(127, (sbyte)blocks[2 + 31]);
        // x / d = -0.5 · 127 / 15.5 = -4.10: rounds to -4
        Assert.Equal(-4, (sbyte)blocks[2 + 15]);
        var zeros = new byte[34];
        GgmlCodec.QuantizeQ8_0(new float[32], zeros);
        Assert.All(zeros, b => Assert.Equal(0, b));
        var decoded = new float[32];
        GgmlCodec.DequantizeQ8_0(blocks, decoded);
        for (int i = 0; i < 32; i++) Assert.True(Math.Abs(decoded[i] - values[i]) <= 15.5 / 127 / 2 * 1.01, $"{i}: {decoded[i]} vs {values[i]}");
    }

    [Fact]
    public void A_k_quant_tensor_fails_naming_the_tensor_and_type()
    {
        using var dir = new TempFolder();
        var config = TinyModels.Llama();
        config.HiddenSize = 256;
        config.IntermediateSize = 256;
        config.NumAttentionHeads = 8;
        config.NumKeyValueHeads = 8;
        config.NumHiddenLayers = 1;
        var (model, tokenizer) = Tiny(config);
        using var _ = model;
        GgufModels.Export(model, tokenizer, dir.File("m.gguf"), GgufFileType.F32);
        // The same file with ffn_down as Q4_K blocks (256 values per 144 bytes).
        CopyReplacing(dir.File("m.gguf"), dir.File("k.gguf"), (writer, file, t) =>
        {
            if (t.Name != "blk.0.ffn_down.weight") return false;
            writer.AddRawTensor(t.Name, t.Shape, GgmlType.Q4_K, new byte[t.ElementCount / 256 * 144]);
            return true;
        });
        using (var k = GgufFile.Open(dir.File("k.gguf")))
        {
            Assert.Equal(GgmlType.Q4_K, k.Info("blk.0.ffn_down.weight").Type);
            var read = Assert.Throws<NotSupportedException>(() => k.ReadTensor("blk.0.ffn_down.weight"));
            Assert.Contains("Q4_K", read.Message);
        }
        var e = Assert.Throws<NotSupportedException>(() => GgufModels.ImportToFolder(dir.File("k.gguf"), dir.File("hf")));
        Assert.Contains("blk.0.ffn_down.weight", e.Message);
        Assert.Contains("Q4_K", e.Message);
        Assert.False(Directory.Exists(dir.File("hf")));
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("llama-rope-llama3")]
    [InlineData("gpt2")]
    public void Malformed_files_give_InvalidDataException_without_large_allocations(string family)
    {
        using var dir = new TempFolder();
        var (model, tokenizer) = Tiny(Config(family));
        using var _ = model;
        GgufModels.Export(model, tokenizer, dir.File("m.gguf"), GgufFileType.F32);
        var valid = File.ReadAllBytes(dir.File("m.gguf"));
        GgufModels.ImportToFolder(dir.File("m.gguf"), dir.File("ok"));   // the unmutated file imports
        long dataEnd;
        using (var file = GgufFile.Open(dir.File("m.gguf"))) dataEnd = file.DataStart + file.Tensors.Max(t => t.Offset + t.ByteLength);
        var variants = GgufLayout.Malformed(valid, dataEnd).ToList();
        Assert.True(variants.Count >= 300, $"{variants.Count} variants");
        var failures = new List<string>();
        foreach (var (what, bytes) in variants)
        {
            File.WriteAllBytes(dir.File("bad.gguf"), bytes);
            long before = GC.GetAllocatedBytesForCurrentThread();
            try
            {
                GgufModels.ImportToFolder(dir.File("bad.gguf"), dir.File("out"));
                failures.Add($"{what}: imported");
            }
            catch (InvalidDataException) { }
            catch (Exception e) { failures.Add($"{what}: {e.GetType().Name}: {e.Message}"); }
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            if (allocated > 32L << 20) failures.Add($"{what}: allocated {allocated:N0} bytes");
        }
        Assert.True(failures.Count == 0, $"{failures.Count} of {variants.Count} variants:\n{string.Join("\n", failures.Take(20))}");
        Assert.False(Directory.Exists(dir.File("out")));
    }

    public static TheoryData<int, double, string> Llama3Models => new()
    {
        { 128, 500000, "8,1,4,8192" },     // Llama 3.1
        { 64, 500000, "32,1,4,8192" },     // Llama 3.2 1B
        { 64, 10000, "4,2,8,256" },        // low_freq_factor ≠ 1: a different point on the same line
        { 16, 10000, "8,1,4,16" },         // one blended frequency
        { 16, 10000, "8,1,4,5" },          // none blended
    };

    [Theory]
    [MemberData(nameof(Llama3Models))]
    public void Llama3_rope_scaling_is_recovered_from_llama_cpp_frequency_divisors(int headDim, double theta, string parameters)
    {
        var p = parameters.Split(',').Select(double.Parse).ToArray();
        var config = new LlamaConfig { HiddenSize = headDim * 2, NumAttentionHeads = 2, RopeTheta = theta, MaxPositionEmbeddings = 131072, RopeScaling = Llama3(p[0], p[1], p[2], (int)p[3]) };
        var divisors = LlamaGguf.RopeFrequencyFactors(config)!;

        var recovered = LlamaGguf.Llama3ScalingFromFactors(divisors, config, "test.gguf")!;
        Assert.Equal("llama3", recovered.Kind);
        Assert.Equal(p[0], recovered.Factor);
        if (p[1] == 1 && divisors.Count(d => d > 1 + 1e-4 && d < p[0] - 1e-4) >= 1)   // Llama 3's own parameters come back as they were
            Assert.Equal((p[2], (int)p[3]), (recovered.HighFreqFactor!.Value, recovered.OriginalMaxPositionEmbeddings!.Value));
        // Whatever the point on the line, the model rotates exactly as llama.cpp does with these divisors.
        var back = LlamaGguf.RopeFrequencyFactors(new LlamaConfig { HiddenSize = headDim * 2, NumAttentionHeads = 2, RopeTheta = theta, MaxPositionEmbeddings = 131072, RopeScaling = recovered })!;
        for (int i = 0; i < divisors.Length; i++) Assert.True(Math.Abs(back[i] - divisors[i]) <= 1e-5 * divisors[i], $"divisor {i}: {back[i]} vs {divisors[i]}");
    }

    [Fact]
    public void Frequency_divisors_no_llama3_scaling_gives_are_refused()
    {
        var config = new LlamaConfig { HiddenSize = 256, NumAttentionHeads = 2, RopeTheta = 500000, MaxPositionEmbeddings = 131072 };
        Assert.Null(LlamaGguf.Llama3ScalingFromFactors(Enumerable.Repeat(1f, 64).ToArray(), config, "ones.gguf"));
        var notMonotone = Enumerable.Range(0, 64).Select(i => i % 2 == 0 ? 1f : 3f).ToArray();
        Assert.Contains("not those of any Llama 3", Assert.Throws<InvalidDataException>(() => LlamaGguf.Llama3ScalingFromFactors(notMonotone, config, "odd.gguf")).Message);
        Assert.Contains("≥ 1", Assert.Throws<InvalidDataException>(() => LlamaGguf.Llama3ScalingFromFactors(Enumerable.Repeat(0.5f, 64).ToArray(), config, "low.gguf")).Message);
        Assert.Contains("≥ 1", Assert.Throws<InvalidDataException>(() => LlamaGguf.Llama3ScalingFromFactors(Enumerable.Repeat(float.NaN, 64).ToArray(), config, "nan.gguf")).Message);
        Assert.Contains("expected 64", Assert.Throws<InvalidDataException>(() => LlamaGguf.Llama3ScalingFromFactors(new float[3], config, "short.gguf")).Message);
    }

    /// <summary>Copies a GGUF file, letting <paramref name="replace"/> write a tensor differently (it returns true when it did).</summary>
    private static void CopyReplacing(string source, string destination, Func<GgufWriter, GgufFile, GgufTensorInfo, bool> replace)
    {
        var writer = new GgufWriter();
        using var file = GgufFile.Open(source);
        using var scope = NewDisposeScope();
        foreach (var (key, value) in file.Metadata) writer.Add(key, value);
        foreach (var t in file.Tensors)
            if (!replace(writer, file, t)) writer.AddTensor(t.Name, file.ReadTensor(t.Name), t.Type);
        writer.Save(destination);
    }

    private static Gpt2Config Gpt2()
    {
        var config = TinyModels.Gpt2();
        config.NInner = 48;   // not 4 × n_embd: feed_forward_length must come back as n_inner
        return config;
    }

    [Fact]
    public void A_gpt2_file_whose_head_is_not_its_embedding_is_refused()
    {
        using var dir = new TempFolder();
        var (model, tokenizer) = Tiny(Gpt2());
        using var _ = model;
        GgufModels.Export(model, tokenizer, dir.File("tied.gguf"), GgufFileType.F32);
        CopyReplacing(dir.File("tied.gguf"), dir.File("untied.gguf"), (writer, file, t) =>
        {
            if (t.Name != "output.weight") return false;
            writer.AddTensor(t.Name, file.ReadTensor(t.Name) * 2, t.Type);
            return true;
        });
        var e = Assert.Throws<NotSupportedException>(() => GgufModels.ImportToFolder(dir.File("untied.gguf"), dir.File("hf")));
        Assert.Contains("output.weight", e.Message);
        Assert.Contains("ties its head", e.Message);
        Assert.False(Directory.Exists(dir.File("hf")));
    }

    [Fact]
    public void Export_refuses_what_llama_cpp_cannot_represent()
    {
        using var dir = new TempFolder();
        var (model, tokenizer) = Tiny(TinyModels.Llama(new MLNetPeft.Architectures.Layers.RopeScaling { RopeType = "dynamic", Factor = 2 }));
        using var _ = model;
        var e = Assert.Throws<NotSupportedException>(() => GgufModels.Export(model, tokenizer, dir.File("m.gguf")));
        Assert.Contains("dynamic", e.Message);
        var erfGelu = TinyModels.Gpt2();
        erfGelu.ActivationFunction = "gelu";   // llama.cpp's gpt2 graph computes the tanh GELU only
        using var gpt2 = PretrainedModels.CreateCausalLM(erfGelu);
        Assert.Contains("gelu", Assert.Throws<NotSupportedException>(() => GgufModels.Export(gpt2, tokenizer, dir.File("g.gguf"))).Message);
        Assert.False(File.Exists(dir.File("g.gguf")));
        Assert.False(File.Exists(dir.File("m.gguf")));
    }
}

/// <summary>Where each field of a GGUF header lies, found by walking it (for tests that corrupt one field at a time).</summary>
internal sealed class GgufLayout
{
    public sealed record Kv(string Key, long KeyLengthAt, long TypeAt, long ValueAt, uint Type, uint? ElementType, long? CountAt);
    public sealed record TensorField(string Name, long NameLengthAt, long DimsCountAt, long FirstDimAt, long TypeAt, long OffsetAt, ulong Offset, ulong FirstDim);

    public List<Kv> Kvs { get; } = [];
    public List<TensorField> Tensors { get; } = [];
    public long HeaderEnd { get; private set; }

    public static GgufLayout Scan(byte[] b)
    {
        var layout = new GgufLayout();
        long p = 8;
        ulong U64() { var v = BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan((int)p)); p += 8; return v; }
        uint U32() { var v = BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan((int)p)); p += 4; return v; }
        string Str() { int n = (int)U64(); var s = Encoding.UTF8.GetString(b, (int)p, n); p += n; return s; }
        void Skip(uint type) { switch (type) { case 0 or 1 or 7: p += 1; break; case 2 or 3: p += 2; break; case 4 or 5 or 6: p += 4; break; case 8: Str(); break; default: p += 8; break; } }
        ulong tensors = U64(), kvs = U64();
        for (ulong i = 0; i < kvs; i++)
        {
            long keyAt = p;
            var key = Str();
            long typeAt = p;
            uint type = U32();
            long valueAt = p;
            if (type == 9)
            {
                uint element = U32();
                long countAt = p;
                ulong count = U64();
                for (ulong j = 0; j < count; j++) Skip(element);
                layout.Kvs.Add(new Kv(key, keyAt, typeAt, valueAt, type, element, countAt));
            }
            else
            {
                Skip(type);
                layout.Kvs.Add(new Kv(key, keyAt, typeAt, valueAt, type, null, null));
            }
        }
        for (ulong i = 0; i < tensors; i++)
        {
            long nameAt = p;
            var name = Str();
            long dimsAt = p;
            uint dims = U32();
            long firstDimAt = p;
            ulong firstDim = U64();
            p += 8 * (dims - 1);
            long typeAt = p;
            U32();
            long offsetAt = p;
            ulong offset = U64();
            layout.Tensors.Add(new TensorField(name, nameAt, dimsAt, firstDimAt, typeAt, offsetAt, offset, firstDim));
        }
        layout.HeaderEnd = p;
        return layout;
    }

    /// <summary>
    /// At least 300 corruptions of <paramref name="valid"/>: truncations, lying counts, lengths, types, dimensions and offsets,
    /// bad strings, impossible hyperparameters. Truncations stop short of <paramref name="dataEnd"/>, the end of the last
    /// tensor's bytes: the alignment padding after it carries nothing (llama.cpp reads such a file too).
    /// </summary>
    public static IEnumerable<(string What, byte[] Bytes)> Malformed(byte[] valid, long dataEnd)
    {
        var layout = Scan(valid);
        byte[] With(long at, ulong value, int width)
        {
            var copy = (byte[])valid.Clone();
            if (width == 8) BinaryPrimitives.WriteUInt64LittleEndian(copy.AsSpan((int)at), value);
            else BinaryPrimitives.WriteUInt32LittleEndian(copy.AsSpan((int)at), (uint)value);
            return copy;
        }
        // Truncations: through the header densely, then into the data.
        for (int i = 0; i < 100; i++)
        {
            long length = layout.HeaderEnd * i / 100;
            yield return ($"truncated to {length} bytes", valid[..(int)length]);
        }
        foreach (var length in new[] { layout.HeaderEnd + 1, layout.HeaderEnd + 100, valid.Length / 2, dataEnd - 100, dataEnd - 1 })
            yield return ($"truncated to {length} bytes", valid[..(int)length]);
        yield return ("wrong magic", With(0, 0x46554746, 4));
        yield return ("version 1", With(4, 1, 4));
        yield return ("version 99", With(4, 99, 4));
        ulong tensorCount = (ulong)layout.Tensors.Count, kvCount = (ulong)layout.Kvs.Count;
        foreach (var n in new[] { 0UL, tensorCount - 1, tensorCount + 1, 1UL << 17, 1UL << 40, ulong.MaxValue })
            yield return ($"tensor count {n}", With(8, n, 8));
        foreach (var n in new[] { 0UL, kvCount - 1, kvCount + 1, 1UL << 20, ulong.MaxValue })
            yield return ($"metadata count {n}", With(16, n, 8));
        foreach (var kv in layout.Kvs)
        {
            foreach (var n in new[] { ulong.MaxValue, 1UL << 30, 0UL })
                yield return ($"key length of '{kv.Key}' = {n}", With(kv.KeyLengthAt, n, 8));
            foreach (var t in new[] { 13UL, 99UL })
                yield return ($"value type of '{kv.Key}' = {t}", With(kv.TypeAt, t, 4));
            if (kv.Type == 8)
            {
                var bad = (byte[])valid.Clone();
                bad[kv.ValueAt + 8] = 0xFF;   // not UTF-8
                yield return ($"invalid UTF-8 in '{kv.Key}'", bad);
                yield return ($"string length of '{kv.Key}' = 2^40", With(kv.ValueAt, 1UL << 40, 8));
            }
            if (kv.CountAt is { } countAt)
            {
                foreach (var n in new[] { ulong.MaxValue, 1UL << 25, 1UL << 23 })
                    yield return ($"array count of '{kv.Key}' = {n}", With(countAt, n, 8));
                foreach (var t in new[] { 9UL, 77UL })
                    yield return ($"array element type of '{kv.Key}' = {t}", With(kv.ValueAt, t, 4));
            }
        }
        // Hyperparameters that no model has, or that do not fit the tensors.
        var badValues = new Dictionary<string, ulong[]>
        {
            ["llama.block_count"] = [0, 1, 3, 1 << 20], ["llama.embedding_length"] = [0, 31, 1UL << 31], ["llama.attention.head_count"] = [0, 3, 5],
            ["llama.attention.head_count_kv"] = [0, 3], ["llama.feed_forward_length"] = [0, 65], ["llama.vocab_size"] = [5, 1UL << 31],
            ["llama.context_length"] = [0], ["tokenizer.ggml.eos_token_id"] = [1 << 20],
        };
        foreach (var kv in layout.Kvs)
            if (badValues.TryGetValue(kv.Key, out var values))
                foreach (var v in values) yield return ($"{kv.Key} = {v}", With(kv.ValueAt, v, 4));
        foreach (var t in layout.Tensors)
        {
            foreach (var n in new[] { 0UL, 5UL, 1000UL })
                yield return ($"'{t.Name}' has {n} dimensions", With(t.DimsCountAt, n, 4));
            foreach (var d in new[] { 0UL, t.FirstDim + 32, 1UL << 41, 1UL << 62 })
                yield return ($"'{t.Name}' dimension 0 = {d}", With(t.FirstDimAt, d, 8));
            foreach (var type in new[] { 4UL, 99UL, 1000UL })
                yield return ($"'{t.Name}' of ggml type {type}", With(t.TypeAt, type, 4));
            foreach (var o in new[] { t.Offset + 1, t.Offset + (1UL << 34), ulong.MaxValue, (ulong)valid.Length })
                yield return ($"'{t.Name}' at offset {o}", With(t.OffsetAt, o, 8));
            var overlapping = layout.Tensors.FirstOrDefault(x => x.Offset != t.Offset);
            if (overlapping is not null) yield return ($"'{t.Name}' at the offset of '{overlapping.Name}'", With(t.OffsetAt, overlapping.Offset, 8));
            yield return ($"tensor name length of '{t.Name}' = 2^40", With(t.NameLengthAt, 1UL << 40, 8));
            var renamed = (byte[])valid.Clone();
            renamed[t.NameLengthAt + 8] = 0xC3;   // a lead byte with no continuation
            yield return ($"invalid UTF-8 in tensor name '{t.Name}'", renamed);
        }
    }
}
