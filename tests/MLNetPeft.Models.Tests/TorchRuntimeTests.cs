using MLNetPeft.Runtime;

namespace MLNetPeft.Models.Tests;

public class TorchRuntimeTests
{
    [Fact]
    public void AnOldCxxRuntimeIsNamedWithItsFix()
    {
        using var dir = new TempFolder();
        var fake = dir.File("libstdc++.so.6");
        File.WriteAllText(fake, "\0GLIBCXX_3.4.29\0GLIBCXX_3.4.30\0");
        var message = TorchRuntime.Explain(fake);
        Assert.Contains(fake, message);
        Assert.Contains("GLIBCXX_3.4.32", message);
        Assert.Contains("eng/ensure-libstdcxx.sh", message);
    }

    [Fact]
    public void WithANewEnoughRuntimeTheMissingBackendIsNamed()
    {
        using var dir = new TempFolder();
        var fake = dir.File("libstdc++.so.6");
        File.WriteAllText(fake, "\0GLIBCXX_3.4.31\0GLIBCXX_3.4.32\0");
        Assert.Contains("TorchSharp-cpu", TorchRuntime.Explain(fake));
        Assert.Contains("TorchSharp-cpu", TorchRuntime.Explain(null));
    }

    [Fact]
    public void TheRuntimeLoadsHere() => TorchRuntime.EnsureAvailable();
}
