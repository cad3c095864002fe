using System.Diagnostics;
using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace MLNetPeft.ML.Tests;

/// <summary>
/// Loads a saved model zip in another process (tests/MLNetPeft.ML.FreshProcess) that never built an estimator, and
/// compares its output columns with this process's, value for value.
/// </summary>
internal static class FreshProcess
{
    public sealed record Row(string Text, string Response);

    /// <summary>The columns' values as JSON arrays, the way the helper prints them.</summary>
    public static IReadOnlyList<string> Columns(IDataView transformed, IEnumerable<string> columns) =>
        columns.Select(c => transformed.Schema[c].Type switch
        {
            TextDataViewType => JsonSerializer.Serialize(transformed.GetColumn<string>(c).ToList()),
            VectorDataViewType { ItemType: TextDataViewType } => JsonSerializer.Serialize(transformed.GetColumn<string[]>(c).ToList()),
            VectorDataViewType => JsonSerializer.Serialize(transformed.GetColumn<float[]>(c).ToList()),
            _ => JsonSerializer.Serialize(transformed.GetColumn<float>(c).ToList()),
        }).ToList();

    public static async Task<IReadOnlyList<string>> RunAsync(string modelPath, IReadOnlyList<Row> rows, IReadOnlyList<string> columns, string scratchFolder)
    {
        var rowsPath = Path.Combine(scratchFolder, $"rows-{Guid.NewGuid():N}.json");
        await File.WriteAllTextAsync(rowsPath, JsonSerializer.Serialize(rows));
        // The helper sits beside this test project's output: tests/MLNetPeft.ML.FreshProcess/bin/<configuration>/<tfm>/.
        var helper = AppContext.BaseDirectory.Replace("MLNetPeft.ML.Tests", "MLNetPeft.ML.FreshProcess") + "MLNetPeft.ML.FreshProcess.dll";
        Assert.True(File.Exists(helper), helper);
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        // The helper loads the zip and ends without disposing the model, as many apps do: the files the model unpacked
        // into the temp folder must go all the same.
        var temp = Path.Combine(scratchFolder, $"tmp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(temp);
        start.Environment["TMPDIR"] = temp;
        foreach (var a in new[] { helper, modelPath, rowsPath }.Concat(columns)) start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        await process.WaitForExitAsync(timeout.Token);
        Assert.True(process.ExitCode == 0, await stderr);
        Assert.Empty(Directory.GetFileSystemEntries(temp, "mlnetpeft-model-*"));
        return (await stdout).Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToList();
    }
}
