using System.Text;
using MLNetPeft.Checkpoints;
using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

/// <summary>
/// Feeds hundreds of corrupted safetensors files to the reader. Each must either be rejected with an
/// <see cref="InvalidDataException"/> that names the file, or (for a corruption that happens to leave a
/// valid file, such as a flipped byte inside a name) load completely; nothing else is acceptable.
/// </summary>
public class SafetensorsCorruptionTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static byte[] ValidFile()
    {
        using var stream = new MemoryStream();
        SafetensorsWriter.Write(stream, new Dictionary<string, Tensor>
        {
            ["embed.weight"] = arange(12, dtype: ScalarType.Float32).view(3, 4),
            ["norm.bias"] = tensor(new sbyte[] { 1, -2, 3, -4, 5 }),
            ["proj.weight"] = ones(2, 2).to(ScalarType.BFloat16),
        }, new Dictionary<string, string> { ["format"] = "pt" });
        return stream.ToArray();
    }

    private static byte[] WithHeader(string json, int dataBytes) => WithHeader(Encoding.UTF8.GetBytes(json), dataBytes);

    private static byte[] WithHeader(byte[] json, int dataBytes)
    {
        var file = new byte[8 + json.Length + dataBytes];
        BitConverter.TryWriteBytes(file.AsSpan(0, 8), (ulong)json.Length);
        json.CopyTo(file, 8);
        return file;
    }

    private static string Entry(string name, string dtype, string shape, string offsets) =>
        $"\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":{offsets}}}";

    public static IEnumerable<(string Description, byte[] Bytes)> Variants()
    {
        var valid = ValidFile();
        ulong headerLength = BitConverter.ToUInt64(valid, 0);
        int dataStart = 8 + (int)headerLength;

        // 1. Truncations, everywhere from the length prefix to the last data byte.
        for (int len = 0; len < valid.Length; len += Math.Max(1, valid.Length / 90))
            yield return ($"truncated to {len} bytes", valid[..len]);
        yield return ("last byte missing", valid[..^1]);
        yield return ("one extra trailing byte", [.. valid, 0]);

        // 2. Lying header lengths.
        ulong[] lengths = [0, 1, 2, 7, 9, headerLength - 1, headerLength + 1, headerLength + 8, (ulong)valid.Length - 7, (ulong)valid.Length,
            100_000_001, 1UL << 32, 1UL << 40, (ulong)long.MaxValue, ulong.MaxValue, ulong.MaxValue - 7];
        foreach (var n in lengths)
        {
            var v = (byte[])valid.Clone();
            BitConverter.TryWriteBytes(v.AsSpan(0, 8), n);
            yield return ($"header length {n}", v);
        }

        // 3. Flipped header bytes (some may still be valid: a flip inside a name or metadata value).
        var random = new Random(1234);
        for (int i = 0; i < 120; i++)
        {
            var v = (byte[])valid.Clone();
            int pos = 8 + random.Next((int)headerLength);
            v[pos] ^= (byte)random.Next(1, 256);
            yield return ($"header byte {pos} flipped", v);
        }
        for (int i = 0; i < 8; i++)
        {
            var v = (byte[])valid.Clone();
            v[random.Next(8)] ^= (byte)random.Next(1, 256);
            yield return ($"length byte flipped #{i}", v);
        }

        // 4. Bad UTF-8 inside the header, keeping its length.
        var headerText = Encoding.UTF8.GetString(valid, 8, (int)headerLength);
        int nameAt = 8 + Encoding.UTF8.GetByteCount(headerText[..headerText.IndexOf("embed", StringComparison.Ordinal)]);
        byte[][] badSequences = [[0xFF], [0xFE], [0x80], [0xC3], [0xC0, 0xAF], [0xE0, 0x80, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80]];
        foreach (var bad in badSequences)
        {
            var v = (byte[])valid.Clone();
            bad.CopyTo(v, nameAt);
            yield return ($"bad UTF-8 {Convert.ToHexString(bad)} in a name", v);
            var w = (byte[])valid.Clone();
            bad.CopyTo(w, 9);
            yield return ($"bad UTF-8 {Convert.ToHexString(bad)} at the header start", w);
        }

        // 5. Crafted headers over a 16-byte data section.
        const string ok = "\"format\":\"pt\"";
        string[] headers =
        [
            "", " ", "null", "[]", "\"text\"", "42", "{", "}", "{]", "{\"a\":}", "{,}", "{\"a\" \"b\"}", "{}x", "\uFEFF{}",
            "{\"__metadata__\":{" + ok + "}}",
            "{" + Entry("a", "F32", "[4]", "[0,16]") + "," + Entry("a", "F32", "[4]", "[0,16]") + "}",
            "{" + Entry("a", "F32", "[4]", "[0,16]") + ",\"__metadata__\":{\"k\":1}}",
            "{" + Entry("a", "F32", "[4]", "[0,16]") + ",\"__metadata__\":[]}",
            "{" + Entry("a", "F32", "[4]", "[0,16]") + ",\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}",
            "{" + Entry("a", "F32", "[4]", "[0,16]") + ",\"__metadata__\":{}" + ",\"__metadata__\":{}}",
            "{" + Entry("a", "F8", "[16]", "[0,16]") + "}",
            "{" + Entry("a", "f32", "[4]", "[0,16]") + "}",
            "{" + Entry("a", "U64", "[2]", "[0,16]") + "}",
            "{\"a\":{\"dtype\":3,\"shape\":[4],\"data_offsets\":[0,16]}}",
            "{\"a\":{\"shape\":[4],\"data_offsets\":[0,16]}}",
            "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,16]}}",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[4]}}",
            "{\"a\":[1,2,3]}", "{\"a\":\"F32\"}", "{\"a\":null}",
            "{" + Entry("a", "F32", "[5]", "[0,16]") + "}",
            "{" + Entry("a", "F32", "[2,2,2]", "[0,16]") + "}",
            "{" + Entry("a", "F32", "[-4]", "[0,16]") + "}",
            "{" + Entry("a", "F32", "[4.0]", "[0,16]") + "}",
            "{" + Entry("a", "F32", "[\"4\"]", "[0,16]") + "}",
            "{" + Entry("a", "F32", "4", "[0,16]") + "}",
            "{" + Entry("a", "F32", "[1e30]", "[0,16]") + "}",
            "{" + Entry("a", "F32", "[1099511627776,1099511627776]", "[0,16]") + "}",
            "{" + Entry("a", "F32", "[4611686018427387904,4]", "[0,16]") + "}",
            "{" + Entry("a", "F32", "[9223372036854775807]", "[0,16]") + "}",
            "{" + Entry("a", "F32", "[99999999999999999999999]", "[0,16]") + "}",
            "{" + Entry("a", "F64", "[3037000500,3037000500]", "[0,16]") + "}",
            "{" + Entry("a", "F32", "[4]", "[0,17]") + "}",
            "{" + Entry("a", "F32", "[4]", "[1,17]") + "}",
            "{" + Entry("a", "F32", "[4]", "[16,0]") + "}",
            "{" + Entry("a", "F32", "[4]", "[-16,0]") + "}",
            "{" + Entry("a", "F32", "[4]", "[0]") + "}",
            "{" + Entry("a", "F32", "[4]", "[0,16,32]") + "}",
            "{" + Entry("a", "F32", "[4]", "[0.0,16.0]") + "}",
            "{" + Entry("a", "F32", "[4]", "{\"begin\":0}") + "}",
            "{" + Entry("a", "F32", "[4]", "[0,9223372036854775807]") + "}",
            "{" + Entry("a", "F32", "[0]", "[9223372036854775807,9223372036854775807]") + "}",
            "{" + Entry("a", "F32", "[2]", "[0,8]") + "}",
            "{" + Entry("a", "F32", "[2]", "[8,16]") + "}",
            "{" + Entry("a", "F32", "[2]", "[0,8]") + "," + Entry("b", "F32", "[2]", "[4,12]") + "}",
            "{" + Entry("a", "F32", "[2]", "[0,8]") + "," + Entry("b", "F32", "[1]", "[12,16]") + "}",
            "{" + Entry("a", "F32", "[4]", "[0,16]") + "," + Entry("b", "F32", "[4]", "[0,16]") + "}",
            "{" + Entry("a", "F32", "[4]", "[0,16]") + "," + Entry("b", "F32", "[1]", "[16,20]") + "}",
            "{" + Entry("a", "I8", "[32]", "[0,32]") + "}",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[[[[[[[[[[4]]]]]]]]]],\"data_offsets\":[0,16]}}",
            "{\"a\":" + new string('[', 50) + new string(']', 50) + "}",
            "{\"" + new string('x', 5000) + "\":{\"dtype\":\"F32\",\"shape\":[5],\"data_offsets\":[0,20]}}",
            "{" + Entry("a\\ud800", "F32", "[5]", "[0,20]") + "}",
        ];
        foreach (var h in headers) yield return ($"header {Shorten(h)}", WithHeader(h, 16));

        // 6. A valid header over a data section of the wrong size.
        var goodHeader = valid.AsSpan(8, (int)headerLength).ToArray();
        int dataBytes = valid.Length - dataStart;
        foreach (var delta in new[] { -dataBytes, -1, 1, 8, 1000 })
            yield return ($"data section {delta:+#;-#} bytes", WithHeader(goodHeader, dataBytes + delta));
    }

    private static string Shorten(string s) => s.Length > 60 ? s[..60] + "…" : s;

    [Fact]
    public void EveryCorruptedFileIsRejectedCleanlyOrLoadsCompletely()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        int rejected = 0, stillValid = 0, index = 0;
        var failures = new List<string>();
        foreach (var (description, bytes) in Variants())
        {
            var path = dir.File($"v{index++}.safetensors");
            File.WriteAllBytes(path, bytes);
            try
            {
                using var file = SafetensorsFile.Open(path);
                foreach (var info in file.Tensors)
                {
                    using var t = file.ReadTensor(info.Name);
                    if (t.numel() != info.ElementCount) failures.Add($"{description}: read {t.numel()} elements, header says {info.ElementCount}");
                }
                stillValid++;
            }
            catch (InvalidDataException e)
            {
                rejected++;
                if (!e.Message.Contains(path)) failures.Add($"{description}: message does not name the file: {e.Message}");
            }
            catch (Exception e)
            {
                failures.Add($"{description}: {e.GetType().Name}: {e.Message}");
            }
        }
        output.WriteLine($"{index} corrupted variants: {rejected} rejected with InvalidDataException, {stillValid} still valid and fully readable");
        Assert.Empty(failures);
        Assert.True(rejected >= 200, $"only {rejected} of {index} variants were rejected");
        Assert.True(stillValid < index / 4, $"{stillValid} of {index} variants were still valid; the corruptions are too mild");
    }

    [Fact]
    public void TheUncorruptedFileLoads()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        File.WriteAllBytes(dir.File("ok.safetensors"), ValidFile());
        using var file = SafetensorsFile.Open(dir.File("ok.safetensors"));
        Assert.Equal(3, file.Tensors.Count);
    }
}
