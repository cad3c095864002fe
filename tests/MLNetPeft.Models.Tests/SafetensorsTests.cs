using System.Text;
using MLNetPeft.Checkpoints;
using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

public class SafetensorsTests
{
    private static Dictionary<string, Tensor> AllDtypes()
    {
        var g = new Generator(7);
        return new Dictionary<string, Tensor>
        {
            ["f64"] = randn([3, 2], ScalarType.Float64, generator: g),
            ["f32"] = randn([4, 5], generator: g),
            ["f16"] = randn([7], generator: g).to(ScalarType.Float16),
            ["bf16"] = randn([2, 3, 2], generator: g).to(ScalarType.BFloat16),
            ["i64"] = tensor(new long[] { long.MinValue, -1, 0, long.MaxValue }),
            ["i32"] = tensor(new[] { int.MinValue, 5, int.MaxValue }),
            ["i16"] = tensor(new short[] { -300, 300 }),
            ["i8"] = tensor(new sbyte[] { -128, 0, 127 }),
            ["u8"] = tensor(new byte[] { 0, 17, 255 }),
            ["bool"] = tensor(new[] { true, false, true }),
            ["scalar"] = tensor(3.5f),
            ["empty"] = zeros([0, 4]),
        };
    }

    [Fact]
    public void EveryDtypeRoundTripsBitForBit()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        var tensors = AllDtypes();
        var path = dir.File("all.safetensors");
        SafetensorsWriter.Save(path, tensors, new Dictionary<string, string> { ["format"] = "pt", ["note"] = "é ✓" });

        using var file = SafetensorsFile.Open(path);
        Assert.Equal("é ✓", file.Metadata["note"]);
        Assert.Equal(tensors.Keys.Order(), file.Tensors.Select(t => t.Name).Order());
        foreach (var (name, expected) in tensors)
        {
            using var actual = file.ReadTensor(name);
            Assert.Equal(expected.dtype, actual.dtype);
            Assert.Equal(expected.shape, actual.shape);
            Assert.True(expected.bytes.SequenceEqual(actual.bytes), $"bytes of {name} differ");
        }
    }

    /// <summary>
    /// Tensors over 2 GiB are written and read through slices of their storage (spans stop at 2 GiB). With the slice size
    /// lowered to a few bytes, small tensors of every dtype take that same path, and round-trip bit for bit.
    /// </summary>
    [Fact]
    public void TensorsLargerThanASliceRoundTripThroughSlices()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        long writeChunk = SafetensorsWriter.ChunkBytes, readChunk = SafetensorsFile.ChunkBytes;
        try
        {
            SafetensorsWriter.ChunkBytes = 24;   // 3 float64, 6 float32, 12 bf16 elements per slice
            SafetensorsFile.ChunkBytes = 40;
            var tensors = AllDtypes();
            tensors["long"] = randn([37, 5], generator: new Generator(3));
            var path = dir.File("sliced.safetensors");
            SafetensorsWriter.Save(path, tensors);
            using var file = SafetensorsFile.Open(path);
            foreach (var (name, expected) in tensors)
            {
                using var actual = file.ReadTensor(name);
                Assert.True(expected.bytes.SequenceEqual(actual.bytes), $"bytes of {name} differ");
            }
        }
        finally
        {
            SafetensorsWriter.ChunkBytes = writeChunk;
            SafetensorsFile.ChunkBytes = readChunk;
        }
    }

    [Fact]
    public void ReadIntoCopiesDirectlyOrConvertsToTheDestinationDtype()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        var half = randn([3, 4], generator: new Generator(3)).to(ScalarType.Float16);
        var single = randn([3, 4], generator: new Generator(4));
        SafetensorsWriter.Save(dir.File("w.safetensors"), new Dictionary<string, Tensor> { ["half"] = half, ["single"] = single });
        using var file = SafetensorsFile.Open(dir.File("w.safetensors"));

        var direct = zeros(3, 4);
        file.ReadInto("single", direct);
        TensorAssert.BitIdentical(single, direct);
        var converted = zeros(3, 4);
        file.ReadInto("half", converted);
        TensorAssert.BitIdentical(half.to(ScalarType.Float32), converted);
        var strided = zeros(4, 3).t();
        file.ReadInto("single", strided);
        TensorAssert.BitIdentical(single, strided.contiguous());
        Assert.Throws<ArgumentException>(() => file.ReadInto("single", zeros(4, 3)));
    }

    [Fact]
    public void HeaderIsPaddedToEightBytesAndDataIsContiguous()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        var path = dir.File("p.safetensors");
        SafetensorsWriter.Save(path, new Dictionary<string, Tensor> { ["a"] = ones(3), ["bb"] = zeros(2, ScalarType.Int8) });
        var bytes = File.ReadAllBytes(path);
        ulong n = BitConverter.ToUInt64(bytes, 0);
        Assert.Equal(0UL, n % 8);
        var header = Encoding.UTF8.GetString(bytes, 8, (int)n);
        Assert.StartsWith("{", header);
        Assert.EndsWith("}", header.TrimEnd(' '));
        Assert.Equal(8 + (long)n + 3 * 4 + 2, bytes.Length);
    }

    [Fact]
    public void WriterRefusesDuplicateAndReservedNames()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        var reserved = new[] { new KeyValuePair<string, Tensor>("__metadata__", ones(1)) };
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Save(dir.File("x.safetensors"), reserved));
        var twice = new[] { new KeyValuePair<string, Tensor>("a", ones(1)), new KeyValuePair<string, Tensor>("a", ones(1)) };
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Save(dir.File("y.safetensors"), twice));
        Assert.Empty(Directory.GetFiles(dir.Path)); // nothing half-written left behind
    }

    [Fact]
    public void NonContiguousTensorsAreWrittenInLogicalOrder()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        var t = arange(12, dtype: ScalarType.Float32).view(3, 4).t();
        SafetensorsWriter.Save(dir.File("t.safetensors"), new Dictionary<string, Tensor> { ["t"] = t });
        using var file = SafetensorsFile.Open(dir.File("t.safetensors"));
        using var back = file.ReadTensor("t");
        TensorAssert.BitIdentical(t.contiguous(), back);
    }

    [Fact]
    public void ShardedCheckpointRoundTripsThroughIndex()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        var tensors = Enumerable.Range(0, 6).ToDictionary(i => $"layer.{i}.weight", i => full([10, 10], (float)i));
        CheckpointWeights.Save(dir.Path, tensors, maxShardBytes: 1000);
        Assert.True(File.Exists(dir.File(CheckpointWeights.IndexFileName)));
        Assert.False(File.Exists(dir.File(CheckpointWeights.SingleFileName)));
        Assert.Equal(3, Directory.GetFiles(dir.Path, "model-*-of-00003.safetensors").Length);

        using (var ckpt = CheckpointWeights.Open(dir.Path))
        {
            Assert.Equal(6, ckpt.TensorNames.Count);
            foreach (var (name, expected) in tensors)
            {
                using var t = ckpt.ReadTensor(name);
                TensorAssert.BitIdentical(expected, t);
            }
        }

        // Saving again unsharded replaces the shards and the index with one file.
        CheckpointWeights.Save(dir.Path, tensors);
        Assert.False(File.Exists(dir.File(CheckpointWeights.IndexFileName)));
        Assert.Empty(Directory.GetFiles(dir.Path, "model-*-of-*.safetensors"));
        using var single = CheckpointWeights.Open(dir.Path);
        Assert.Equal(6, single.TensorNames.Count);
    }

    [Theory]
    [InlineData("{\"weight_map\": {\"a\": \"../escape.safetensors\"}}", "not a plain file name")]
    [InlineData("{\"weight_map\": {\"a\": \"missing.safetensors\"}}", "does not exist")]
    [InlineData("{\"weight_map\": {\"zzz\": \"model.safetensors\"}}", "does not contain it")]
    [InlineData("{\"weight_map\": [1, 2]}", "no 'weight_map' object")]
    [InlineData("{\"weight_map\": {\"a\": 3}}", "other than a file name")]
    [InlineData("{not json", "not well-formed JSON")]
    public void BadShardIndexIsRejectedClearly(string index, string reason)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        SafetensorsWriter.Save(dir.File("model.safetensors"), new Dictionary<string, Tensor> { ["a"] = ones(2) });
        File.WriteAllText(dir.File(CheckpointWeights.IndexFileName), index);
        var e = Assert.Throws<InvalidDataException>(() => CheckpointWeights.Open(dir.Path).Dispose());
        Assert.Contains(reason, e.Message);
        Assert.Contains(CheckpointWeights.IndexFileName, e.Message);
    }

    [Fact]
    public void MissingWeightsNameTheFolder()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        var e = Assert.Throws<FileNotFoundException>(() => CheckpointWeights.Open(dir.Path));
        Assert.Contains(dir.Path, e.Message);
    }
}
