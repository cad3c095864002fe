using System.Diagnostics;
using System.Text.Json;

namespace MLNetPeft.ML.Tests;

public class MalformedInputFuzzTests
{
    /// <summary>
    /// Over a thousand damaged inputs (model zips with bit flips, cuts, missing, empty or altered streams; config.json,
    /// tokenizer files, adapter_config.json and adapter weights with raw damage or one value replaced by an extreme or
    /// mistyped one), loaded in a process of their own: each either loads and behaves as the undamaged input does
    /// (for a zip: generates the same text) or ends in a documented exception that names the file, the process never
    /// crashes, and its peak resident memory stays within 1 GB of what it held before.
    /// </summary>
    [Fact]
    public async Task EveryDamagedInputLoadsUnchangedOrFailsNamingTheFile()
    {
        using var dir = new TempFolder();
        var helper = AppContext.BaseDirectory.Replace("MLNetPeft.ML.Tests", "MLNetPeft.ML.FreshProcess") + "MLNetPeft.ML.FreshProcess.dll";
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { helper, "--malformed-inputs", dir.Path }) start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(4));
        await process.WaitForExitAsync(timeout.Token);
        Assert.True(process.ExitCode == 0, $"the helper exited with {process.ExitCode}: {await stderr}");

        using var summary = JsonDocument.Parse(await stdout);
        var root = summary.RootElement;
        Assert.True(root.GetProperty("cases").GetInt32() >= 1000, root.ToString());
        foreach (var kind in new[] { "model zip", "config.json", "vocab.json", "merges.txt", "tokenizer_config.json", "adapter_config.json", "adapter_model.safetensors" })
            Assert.True(root.GetProperty("byKind").TryGetProperty(kind, out _), $"no {kind} cases: {root}");
        Assert.True(root.GetProperty("unacceptableCount").GetInt32() == 0, root.GetProperty("unacceptable").ToString());
        long grown = root.GetProperty("peakResident").GetInt64() - root.GetProperty("residentBefore").GetInt64();
        Assert.True(grown < 1L << 30, $"peak resident memory grew by {grown:N0} bytes");
    }
}
