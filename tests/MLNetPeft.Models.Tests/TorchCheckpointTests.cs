using System.IO.Compression;
using System.Text;
using System.Text.RegularExpressions;
using MLNetPeft.Checkpoints;
using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

/// <summary>
/// Writes archives in torch.save's zip format (protocol-2 pickle as PyTorch emits it, one stored record per storage)
/// so that the weights-only reader can be tested without Python; <see cref="Pickle"/> lets a test put any bytes there.
/// </summary>
internal static class TorchSaveFixture
{
    public sealed record Entry(string Name, float[] Values, long[] Shape, long[]? Stride = null, long Offset = 0, string Storage = "FloatStorage", long? ClaimedCount = null);

    public static byte[] Pickle(IReadOnlyList<Entry> entries, Func<int, string>? global = null)
    {
        var p = new List<byte> { 0x80, 2, (byte)'}', (byte)'(' };
        for (int i = 0; i < entries.Count; i++)
        {
            var e = entries[i];
            Unicode(p, e.Name);
            Global(p, global?.Invoke(i) ?? "torch._utils\n_rebuild_tensor_v2");
            p.Add((byte)'(');
            p.Add((byte)'(');
            Unicode(p, "storage");
            Global(p, "torch\n" + e.Storage);
            Unicode(p, i.ToString(System.Globalization.CultureInfo.InvariantCulture));
            Unicode(p, "cpu");
            Int(p, e.ClaimedCount ?? e.Values.Length);
            p.Add((byte)'t');
            p.Add((byte)'Q');
            Int(p, e.Offset);
            Tuple(p, e.Shape);
            Tuple(p, e.Stride ?? Contiguous(e.Shape));
            p.Add(0x89);
            Global(p, "collections\nOrderedDict");
            p.Add((byte)')');
            p.Add((byte)'R');
            p.Add((byte)'t');
            p.Add((byte)'R');
        }
        p.Add((byte)'u');
        p.Add((byte)'.');
        return [.. p];
    }

    public static byte[] Archive(IReadOnlyList<Entry> entries, byte[]? pickle = null, string prefix = "archive")
    {
        using var memory = new MemoryStream();
        using (var zip = new ZipArchive(memory, ZipArchiveMode.Create, leaveOpen: true))
        {
            Add(zip, $"{prefix}/data.pkl", pickle ?? Pickle(entries));
            Add(zip, $"{prefix}/byteorder", Encoding.ASCII.GetBytes("little"));
            for (int i = 0; i < entries.Count; i++)
                Add(zip, $"{prefix}/data/{i}", entries[i].Values.SelectMany(BitConverter.GetBytes).ToArray());
            Add(zip, $"{prefix}/version", Encoding.ASCII.GetBytes("3\n"));
        }
        return memory.ToArray();
    }

    private static void Add(ZipArchive zip, string name, byte[] bytes)
    {
        using var stream = zip.CreateEntry(name, CompressionLevel.NoCompression).Open();
        stream.Write(bytes);
    }

    private static long[] Contiguous(long[] shape)
    {
        var stride = new long[shape.Length];
        long s = 1;
        for (int d = shape.Length - 1; d >= 0; d--) { stride[d] = s; s *= shape[d]; }
        return stride;
    }

    private static void Unicode(List<byte> p, string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        p.Add((byte)'X');
        p.AddRange(BitConverter.GetBytes(bytes.Length));
        p.AddRange(bytes);
    }

    private static void Global(List<byte> p, string moduleAndName)
    {
        p.Add((byte)'c');
        p.AddRange(Encoding.ASCII.GetBytes(moduleAndName + "\n"));
    }

    private static void Int(List<byte> p, long value)
    {
        p.Add(0x8a);   // LONG1 with 8 bytes: any value
        p.Add(8);
        p.AddRange(BitConverter.GetBytes(value));
    }

    private static void Tuple(List<byte> p, long[] values)
    {
        p.Add((byte)'(');
        foreach (var v in values) Int(p, v);
        p.Add((byte)'t');
    }
}

public class TorchCheckpointTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly TorchSaveFixture.Entry[] Two =
    [
        new("base_model.model.lin0.lora_A.weight", Enumerable.Range(0, 12).Select(i => i * 0.5f).ToArray(), [3, 4]),
        // A transposed view: the saved strides are honoured.
        new("base_model.model.lin0.lora_B.weight", Enumerable.Range(0, 6).Select(i => -i * 1f).ToArray(), [3, 2], Stride: [1, 3]),
    ];

    private static string Write(TempFolder dir, byte[] bytes, string name = "adapter_model.bin")
    {
        var path = dir.File(name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    [Fact]
    public void ATorchSaveArchiveReadsWeightsOnlyWithItsViews()
    {
        using var testScope = NewDisposeScope();
        using var dir = new TempFolder();
        using var file = TorchCheckpointFile.Open(Write(dir, TorchSaveFixture.Archive(Two)));
        Assert.Equal(Two.Select(t => t.Name), file.TensorNames);
        Assert.Equal([3L, 4L], file.ShapeOf(Two[0].Name));
        Assert.Equal(ScalarType.Float32, file.DTypeOf(Two[0].Name));
        Assert.Equal(Two[0].Values, file.ReadTensor(Two[0].Name).data<float>().ToArray());
        // Element (i, j) of the [3, 2] view with strides (1, 3) is storage[i + 3j].
        Assert.Equal(new float[] { 0, -3, -1, -4, -2, -5 }, file.ReadTensor(Two[1].Name).data<float>().ToArray());
        var destination = zeros(3, 4, dtype: ScalarType.BFloat16);
        file.ReadInto(Two[0].Name, destination);
        Assert.Equal(2.0f, destination[1, 0].to(ScalarType.Float32).item<float>());   // storage[4] = 4 · 0.5
    }

    /// <summary>An HF folder that has only pytorch_model.bin loads like its safetensors twin.</summary>
    [Fact]
    public void ACheckpointFolderWithPytorchModelBinLoadsLikeItsSafetensorsTwin()
    {
        using var testScope = NewDisposeScope();
        using var dir = new TempFolder();
        using var model = TinyModels.Randomize(new Architectures.LlamaForCausalLM(TinyModels.Llama()), 4);
        model.SavePretrained(dir.File("safetensors"));
        var bin = Directory.CreateDirectory(dir.File("bin")).FullName;
        File.Copy(dir.File("safetensors/config.json"), Path.Combine(bin, "config.json"));
        var entries = model.state_dict().Select(kv => new TorchSaveFixture.Entry(kv.Key, kv.Value.contiguous().data<float>().ToArray(), kv.Value.shape)).ToList();
        File.WriteAllBytes(Path.Combine(bin, CheckpointWeights.PyTorchFileName), TorchSaveFixture.Archive(entries));
        using var fromBin = Architectures.PretrainedModels.LoadCausalLM(bin);
        using var fromSafetensors = Architectures.PretrainedModels.LoadCausalLM(dir.File("safetensors"));
        var ids = TinyModels.RandomIds(2, 5, 101, 1);
        TensorAssert.BitIdentical(fromSafetensors.Forward(ids), fromBin.Forward(ids), "logits");
    }

    [Theory]
    [InlineData("os\nsystem")]
    [InlineData("builtins\neval")]
    [InlineData("subprocess\nPopen")]
    [InlineData("torch\nload")]
    [InlineData("__builtin__\ngetattr")]
    [InlineData("numpy.core.multiarray\n_reconstruct")]
    public void AForbiddenGlobalIsRefusedByNameAndNothingRuns(string global)
    {
        using var dir = new TempFolder();
        var path = Write(dir, TorchSaveFixture.Archive(Two, TorchSaveFixture.Pickle(Two, i => i == 1 ? global : "torch._utils\n_rebuild_tensor_v2")));
        var e = Assert.Throws<InvalidDataException>(() => TorchCheckpointFile.Open(path));
        Assert.Contains(global.Replace('\n', '.'), e.Message);
        Assert.Contains(path, e.Message);
    }

    [Theory]
    [InlineData(1_000_000_000L, "claims")]   // the pickle claims a huge storage: refused before any allocation
    [InlineData(-5L, "negative")]
    [InlineData(7L, "claims")]
    public void AStorageThatLiesAboutItsSizeIsRefused(long claimed, string expected)
    {
        using var dir = new TempFolder();
        var entries = new[] { Two[0] with { ClaimedCount = claimed } };
        var e = Assert.Throws<InvalidDataException>(() => TorchCheckpointFile.Open(Write(dir, TorchSaveFixture.Archive(entries))));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void AViewOutsideItsStorageIsRefused()
    {
        using var dir = new TempFolder();
        foreach (var bad in new[] { Two[0] with { Offset = 5 }, Two[0] with { Shape = [4, 4] }, Two[0] with { Stride = [4, 2] }, Two[0] with { Shape = [1L << 40, 1L << 40] } })
            Assert.Throws<InvalidDataException>(() => TorchCheckpointFile.Open(Write(dir, TorchSaveFixture.Archive([bad]))));
    }

    /// <summary>
    /// At least 500 malformed archives: truncations, flipped bits in the zip and (with a valid zip around it) in the
    /// pickle, random opcodes, and lying sizes. Each either opens and reads cleanly or fails with InvalidDataException.
    /// </summary>
    [Fact]
    public void MalformedArchivesFailOnlyWithInvalidDataException()
    {
        using var testScope = NewDisposeScope();
        using var dir = new TempFolder();
        var good = TorchSaveFixture.Archive(Two);
        var pickle = TorchSaveFixture.Pickle(Two);
        var random = new Random(11);
        var variants = new List<(string What, byte[] Bytes)>();
        for (int i = 0; i < 150; i++) variants.Add(($"zip cut at {i * good.Length / 150}", good[..(i * good.Length / 150)]));
        for (int i = 0; i < 150; i++)
        {
            var bytes = (byte[])good.Clone();
            int at = random.Next(bytes.Length);
            bytes[at] ^= (byte)(1 << random.Next(8));
            variants.Add(($"zip bit flipped at {at}", bytes));
        }
        for (int i = 0; i < 200; i++)
        {
            var bytes = (byte[])pickle.Clone();
            int at = random.Next(bytes.Length);
            if (i % 2 == 0) bytes[at] ^= (byte)(1 << random.Next(8));
            else bytes[at] = (byte)random.Next(256);
            variants.Add(($"pickle byte {at} changed", TorchSaveFixture.Archive(Two, bytes)));
        }
        for (int i = 0; i < 60; i++) variants.Add(($"pickle cut at {i * pickle.Length / 60}", TorchSaveFixture.Archive(Two, pickle[..(i * pickle.Length / 60)])));
        variants.Add(("no pickle", TorchSaveFixture.Archive([], [])));
        variants.Add(("legacy bare pickle", pickle));
        long allocatedBefore = GC.GetTotalAllocatedBytes(precise: true);
        int opened = 0, refused = 0;
        foreach (var (what, bytes) in variants)
        {
            var path = Write(dir, bytes);
            try
            {
                using var file = TorchCheckpointFile.Open(path);
                foreach (var name in file.TensorNames) file.ReadTensor(name).Dispose();
                opened++;
            }
            catch (InvalidDataException e)
            {
                Assert.Contains(path, e.Message);
                refused++;
            }
            catch (Exception e)
            {
                Assert.Fail($"{what}: {e.GetType().Name}: {e.Message}");
            }
        }
        long allocated = GC.GetTotalAllocatedBytes(precise: true) - allocatedBefore;
        output.WriteLine($"{variants.Count} variants: {refused} refused with InvalidDataException, {opened} still valid; {allocated / 1e6:F1} MB allocated in all");
        Assert.True(variants.Count >= 500);
        Assert.True(refused > variants.Count / 2);
        Assert.True(allocated < 1L << 30, $"{allocated} bytes allocated");
    }

    /// <summary>Every .bin and .pt that Python wrote in ../shared/data/peft_adapters: names, dtypes and shapes as its README.txt lists them.</summary>
    [SkippableFact]
    public void EveryPyTorchFileOfThePeftFoldersReadsAsItsReadmeDescribes()
    {
        using var testScope = NewDisposeScope();
        var root = SharedData.Require("peft_adapters");
        var files = Directory.GetFiles(root, "*.bin", SearchOption.AllDirectories).Concat(Directory.GetFiles(root, "*.pt", SearchOption.AllDirectories)).Order().ToList();
        Assert.True(files.Count >= 11, $"{files.Count} files");
        foreach (var path in files)
        {
            var expected = ReadmeListing(Path.Combine(Path.GetDirectoryName(path)!, "README.txt"), Path.GetFileName(path));
            using var file = TorchCheckpointFile.Open(path);
            Assert.Equal(expected.Keys.Order(StringComparer.Ordinal), file.TensorNames.Order(StringComparer.Ordinal));
            foreach (var (name, (dtype, shape)) in expected)
            {
                Assert.Equal(dtype, file.DTypeOf(name));
                Assert.Equal(shape, file.ShapeOf(name));
                using var tensor = file.ReadTensor(name);
                Assert.True(tensor.isfinite().all().item<bool>(), $"{path}: {name}");
            }
            output.WriteLine($"{Path.GetRelativePath(root, path)}: {expected.Count} tensor(s) as listed");
        }
        // The values the README prints for the LoRA regression output.
        using var lora = TorchCheckpointFile.Open(Path.Combine(root, "peft_regr_adalora_mlp", "output.pt"));
        var values = lora.ReadTensor(TorchCheckpointFile.SingleTensorName).data<float>().ToArray();
        Assert.Equal(-0.0001472126314183697f, values[0]);
        Assert.Equal(-186.38539123535156f, values[^1]);
    }

    /// <summary>The "torch zip pickle {file}" section of a folder's README.txt: each tensor's name, dtype and shape.</summary>
    private static Dictionary<string, (ScalarType, long[])> ReadmeListing(string readme, string fileName)
    {
        var lines = File.ReadAllLines(readme);
        int start = Array.FindIndex(lines, l => l.StartsWith($"torch zip pickle {fileName} ", StringComparison.Ordinal));
        Assert.True(start >= 0, $"{readme} does not describe {fileName}");
        var result = new Dictionary<string, (ScalarType, long[])>(StringComparer.Ordinal);
        var single = Regex.Match(lines[start + 1], @"^\s+single tensor (\w+) \[([\d, ]*)\]");
        if (single.Success)
        {
            result[TorchCheckpointFile.SingleTensorName] = (DType(single.Groups[1].Value), Shape(single.Groups[2].Value));
            return result;
        }
        int count = int.Parse(Regex.Match(lines[start + 1], @"tensors=(\d+)").Groups[1].Value);
        for (int i = 0; i < count; i++)
        {
            var m = Regex.Match(lines[start + 2 + i], @"^\s+(\S+)\s+(\w+)\s+\[([\d, ]*)\]");
            Assert.True(m.Success, lines[start + 2 + i]);
            result[m.Groups[1].Value] = (DType(m.Groups[2].Value), Shape(m.Groups[3].Value));
        }
        return result;
    }

    private static ScalarType DType(string text) => text switch
    {
        "F32" => ScalarType.Float32, "F16" => ScalarType.Float16, "BF16" => ScalarType.BFloat16, "F64" => ScalarType.Float64, "I64" => ScalarType.Int64,
        _ => throw new ArgumentException(text),
    };

    private static long[] Shape(string text) => text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(long.Parse).ToArray();
}
