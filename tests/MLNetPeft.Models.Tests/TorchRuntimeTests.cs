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

    [SkippableTheory]
    [InlineData("deb822", "http://mirror.example/debian")]
    [InlineData("one-line", "http://old.example/debian")]
    [InlineData("none", "http://deb.debian.org/debian")]
    public void TheTrixieSourceUsesTheDebianMirrorTheSystemAlreadyUses(string layout, string expected)
    {
        Skip.IfNot(OperatingSystem.IsLinux() && File.Exists("/bin/bash"), "the script is for Linux");
        using var dir = new TempFolder();
        Directory.CreateDirectory(dir.File("sources.list.d"));
        if (layout == "deb822")
        {
            // The security archive comes first and must not be taken; our own trixie entry neither.
            File.WriteAllText(dir.File("sources.list.d/debian.sources"),
                "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n" +
                "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n");
            File.WriteAllText(dir.File("sources.list.d/mlnetpeft-trixie.sources"), "Types: deb\nURIs: http://elsewhere/debian\nSuites: bookworm\n");
        }
        else if (layout == "one-line")
        {
            File.WriteAllText(dir.File("sources.list"),
                "deb http://security.example/debian-security bookworm-security main\n" +
                "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://old.example/debian bookworm main\n");
        }
        var script = Path.Combine(SharedData.RepositoryRoot, "eng", "ensure-libstdcxx.sh");
        var start = new System.Diagnostics.ProcessStartInfo("/bin/bash", [script, "--print-mirror"]) { RedirectStandardOutput = true };
        start.Environment["MLNETPEFT_APT_ETC"] = dir.Path;
        start.Environment["MLNETPEFT_DEBIAN_CODENAME"] = "bookworm";
        using var process = System.Diagnostics.Process.Start(start)!;
        var output = process.StandardOutput.ReadToEnd().Trim();
        process.WaitForExit();
        Assert.Equal(0, process.ExitCode);
        Assert.Equal(expected, output);
    }
}
