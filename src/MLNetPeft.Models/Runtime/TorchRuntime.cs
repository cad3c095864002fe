using TorchSharp;

namespace MLNetPeft.Runtime;

/// <summary>Raised when TorchSharp's native runtime cannot be loaded; the message says what is missing and how to fix it.</summary>
public sealed class TorchRuntimeUnavailableException : Exception
{
    public TorchRuntimeUnavailableException(string message, Exception? inner) : base(message, inner) { }
}

/// <summary>
/// Loads TorchSharp's native runtime once and turns its failure into one actionable message instead
/// of TorchSharp's long trace of probed paths. Every entry point of this library that creates tensors calls
/// <see cref="EnsureAvailable"/> first.
/// </summary>
public static class TorchRuntime
{
    /// <summary>The C++ runtime symbol version that TorchSharp 0.107's libLibTorchSharp.so needs (GCC 13).</summary>
    public const string RequiredGlibcxx = "GLIBCXX_3.4.32";

    private static readonly Lazy<Exception?> LoadFailure = new(TryLoad, LazyThreadSafetyMode.ExecutionAndPublication);

    public static void EnsureAvailable()
    {
        if (LoadFailure.Value is { } failure) throw failure;
    }

    private static Exception? TryLoad()
    {
        try
        {
            torch.InitializeDeviceType(DeviceType.CPU);
            return null;
        }
        catch (Exception e) when (e is NotSupportedException or DllNotFoundException or TypeInitializationException or EntryPointNotFoundException)
        {
            return new TorchRuntimeUnavailableException(Explain(OperatingSystem.IsLinux() ? FindLibStdCxx() : null), e);
        }
    }

    /// <summary>Why loading failed, given the C++ runtime library found on this machine (null when none applies).</summary>
    internal static string Explain(string? libStdCxx)
    {
        var prefix = "TorchSharp's native runtime (libtorch 2.10 via TorchSharp 0.107) could not be loaded. ";
        if (libStdCxx is { } lib && !ContainsSymbolVersion(lib, RequiredGlibcxx))
        {
            return prefix + $"The C++ runtime '{lib}' lacks {RequiredGlibcxx} (GCC 13's libstdc++), which libLibTorchSharp.so needs. " +
                "On Debian 12 run the repository's 'eng/ensure-libstdcxx.sh' as root once (it installs libstdc++6 from Debian 13 " +
                "with a low apt pin priority); elsewhere install GCC 13 or newer's libstdc++.";
        }
        return prefix + "Reference a backend package from your application: 'TorchSharp-cpu' (CPU), 'TorchSharp-cuda-windows' or " +
            "'TorchSharp-cuda-linux' (NVIDIA GPUs), all at version 0.107.0. See the inner exception for the libraries TorchSharp probed.";
    }

    private static string? FindLibStdCxx()
    {
        string[] candidates =
        [
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/aarch64-linux-gnu/libstdc++.so.6",
            "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
        ];
        return candidates.FirstOrDefault(File.Exists);
    }

    private static bool ContainsSymbolVersion(string path, string symbol)
    {
        var needle = System.Text.Encoding.ASCII.GetBytes(symbol);
        var bytes = File.ReadAllBytes(path);
        return bytes.AsSpan().IndexOf(needle) >= 0;
    }
}
