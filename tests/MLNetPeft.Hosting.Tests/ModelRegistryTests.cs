using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Microsoft.ML;
using Microsoft.ML.Transforms.Text;
using MLNetPeft.Hosting.Models;

namespace MLNetPeft.Hosting.Tests;

public class ModelRegistryTests
{
    public sealed class Input
    {
        public string Text { get; set; } = "";
    }

    public sealed class Output
    {
        public string Normalized { get; set; } = "";
    }

    /// <summary>A cheap saved model whose output shows which version answered: upper or lower case.</summary>
    internal static void SaveCaseModel(string path, bool upper)
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(new[] { new Input { Text = "x" } });
        var model = ml.Transforms.Text.NormalizeText("Normalized", "Text",
            upper ? TextNormalizingEstimator.CaseMode.Upper : TextNormalizingEstimator.CaseMode.Lower).Fit(data);
        // Replaced atomically, as the registry asks of a watched file: written beside it, then renamed over it.
        string temp = path + ".tmp";
        ml.Model.Save(model, data.Schema, temp);
        File.Move(temp, path, overwrite: true);
    }

    internal static IHost BuildHost(string contentRoot, Dictionary<string, string?> settings, Action<IServiceCollection>? more = null)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { ContentRootPath = contentRoot, DisableDefaults = true });
        builder.Configuration.AddInMemoryCollection(settings);
        builder.Services.AddMLNetPeftModels(builder.Configuration);
        more?.Invoke(builder.Services);
        return builder.Build();
    }

    [Fact]
    public async Task BadSettingsStopTheHostAndNameTheSetting()
    {
        using var dir = new TempFolder();
        SaveCaseModel(dir.File("ok.zip"), upper: true);
        using var host = BuildHost(dir.Path, new()
        {
            ["MLNetPeft:Models:noPath:WatchForChanges"] = "false",
            ["MLNetPeft:Models:missing:Path"] = "models/missing.zip",
            ["MLNetPeft:Models:zeroPool:Path"] = "ok.zip",
            ["MLNetPeft:Models:zeroPool:MaxPooledEngines"] = "0",
        });
        var e = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());
        Assert.Contains("MLNetPeft:Models:noPath:Path is required", e.Message);
        Assert.Contains("MLNetPeft:Models:missing:Path: the file 'models/missing.zip' does not exist", e.Message);
        Assert.Contains(Path.Combine(dir.Path, "models", "missing.zip"), e.Message);
        Assert.Contains("MLNetPeft:Models:zeroPool:MaxPooledEngines is 0", e.Message);
    }

    [Fact]
    public async Task AFileThatIsNotAModelStopsTheHostNamingModelAndFile()
    {
        using var dir = new TempFolder();
        File.WriteAllText(dir.File("broken.zip"), "not a zip");
        using var host = BuildHost(dir.Path, new() { ["MLNetPeft:Models:broken:Path"] = "broken.zip" });
        var e = await Assert.ThrowsAsync<InvalidDataException>(() => host.StartAsync());
        Assert.Contains("Model 'broken'", e.Message);
        Assert.Contains(dir.File("broken.zip"), e.Message);
    }

    [Fact]
    public async Task PoolServesRegisteredModelsFromManyThreadsAndNamesUnknownOnes()
    {
        using var dir = new TempFolder();
        SaveCaseModel(dir.File("upper.zip"), upper: true);
        SaveCaseModel(dir.File("lower.zip"), upper: false);
        using var host = BuildHost(dir.Path, new()
        {
            ["MLNetPeft:Models:upper:Path"] = "upper.zip",
            ["MLNetPeft:Models:lower:Path"] = "lower.zip",
            ["MLNetPeft:Models:lower:MaxPooledEngines"] = "2",
        });
        await host.StartAsync();
        var pool = host.Services.GetRequiredService<PredictionEnginePool<Input, Output>>();

        var texts = Enumerable.Range(0, 200).Select(i => $"Row {i} MiXeD").ToArray();
        var results = new string[texts.Length];
        Parallel.For(0, texts.Length, new ParallelOptions { MaxDegreeOfParallelism = 8 },
            i => results[i] = pool.Predict(i % 2 == 0 ? "UPPER" : "lower", new Input { Text = texts[i] }).Normalized);
        for (int i = 0; i < texts.Length; i++)
            Assert.Equal(i % 2 == 0 ? texts[i].ToUpperInvariant() : texts[i].ToLowerInvariant(), results[i]);

        var unknown = Assert.Throws<KeyNotFoundException>(() => pool.Predict("chat", new Input()));
        Assert.Contains("'chat'", unknown.Message);
        Assert.Contains("the registered models are: ", unknown.Message);
        Assert.Contains("upper", unknown.Message);
        Assert.Contains("lower", unknown.Message);

        var engine = pool.GetPredictionEngine("upper");
        Assert.Throws<ArgumentException>(() => pool.ReturnPredictionEngine("lower", engine));
        pool.ReturnPredictionEngine("upper", engine);
        Assert.Throws<ArgumentException>(() => pool.ReturnPredictionEngine("upper", engine)); // twice
        await host.StopAsync();
    }

    [Fact]
    public async Task ReplacingTheFileReloadsItWhileLeasesKeepTheOldVersionAlive()
    {
        using var dir = new TempFolder();
        string path = dir.File("case.zip");
        SaveCaseModel(path, upper: true);
        using var host = BuildHost(dir.Path, new() { ["MLNetPeft:Models:case:Path"] = "case.zip" });
        await host.StartAsync();
        var registry = host.Services.GetRequiredService<ModelRegistry>();
        var pool = host.Services.GetRequiredService<PredictionEnginePool<Input, Output>>();
        Assert.Equal("ABC", pool.Predict("case", new Input { Text = "aBc" }).Normalized);

        var lease = registry.Acquire("case");
        var rentedBefore = pool.GetPredictionEngine("case");
        var reloaded = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        registry.Reloaded += (name, version) => reloaded.TrySetResult(version);
        SaveCaseModel(path, upper: false);
        Assert.Equal(2, await reloaded.Task.WaitAsync(TimeSpan.FromSeconds(30)));

        Assert.Equal("abc", pool.Predict("case", new Input { Text = "aBc" }).Normalized);
        // The old version still serves whoever holds it, and is disposed when the last of them lets go.
        Assert.Equal(1, lease.Model.Version);
        Assert.False(lease.Model.IsDisposed);
        Assert.Equal("ABC", rentedBefore.Predict(new Input { Text = "aBc" }).Normalized);
        var old = lease.Model;
        lease.Dispose();
        Assert.False(old.IsDisposed);
        pool.ReturnPredictionEngine("case", rentedBefore);
        Assert.True(old.IsDisposed);
        await host.StopAsync();
    }

    [Fact]
    public async Task AReplacementThatDoesNotLoadKeepsTheRunningVersion()
    {
        using var dir = new TempFolder();
        string path = dir.File("case.zip");
        SaveCaseModel(path, upper: true);
        var registry = new ModelRegistry(Options.Create(new MLNetPeftHostingOptions
        {
            Models = { ["case"] = new ModelRegistrationOptions { Path = path, WatchForChanges = false } },
        }));
        using (registry)
        {
            var pool = new PredictionEnginePool<Input, Output>(registry);
            Assert.Equal("ABC", pool.Predict("case", new Input { Text = "aBc" }).Normalized);
            File.WriteAllBytes(path + ".tmp", [0x50, 0x4B, 0x03, 0x04, 1, 2, 3]);
            File.Move(path + ".tmp", path, overwrite: true);
            Assert.False(registry.Reload("case"));
            using (var lease = registry.Acquire("case")) Assert.Equal(1, lease.Model.Version);
            Assert.Equal("ABC", pool.Predict("case", new Input { Text = "aBc" }).Normalized);

            SaveCaseModel(path, upper: false);
            Assert.True(registry.Reload("case"));
            Assert.Equal("abc", pool.Predict("case", new Input { Text = "aBc" }).Normalized);
        }
        // Without the host, the registry validates its options the same way.
        var e = Assert.Throws<OptionsValidationException>(() => new ModelRegistry(Options.Create(new MLNetPeftHostingOptions
        {
            Models = { ["x"] = new ModelRegistrationOptions() },
        })));
        Assert.Contains("MLNetPeft:Models:x:Path is required", e.Message);
    }
}
