using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace MLNetPeft.Retrieval.Tests;

/// <summary>
/// A throwaway PostgreSQL server with pgvector for the tests: initdb into a temp folder (as the postgres user when the
/// tests run as root), pg_ctl start on a free loopback port with its socket in that folder, no fsync; stopped and
/// deleted on dispose. No system service is used. The server binaries are found where eng/ensure-pgvector.sh (run by
/// this project's build) installs them; MLNetPeftSkipPgvector=true skips the tests that need it.
/// </summary>
public sealed class PostgresServer : IDisposable
{
    private readonly string _folder;
    private readonly string _bin;
    private readonly string? _runAs;
    private int _databases;

    public PostgresServer()
    {
        if (string.Equals(Environment.GetEnvironmentVariable("MLNetPeftSkipPgvector"), "true", StringComparison.OrdinalIgnoreCase))
        {
            Unavailable = "MLNetPeftSkipPgvector=true";
            _folder = _bin = "";
            return;
        }
        _bin = FindBinFolder() ?? throw new InvalidOperationException(
            "No PostgreSQL server with pgvector was found under /usr/lib/postgresql/*/bin. The build of this test project runs eng/ensure-pgvector.sh, " +
            "which installs it on Debian as root; run it by hand (sudo eng/ensure-pgvector.sh), or set MLNetPeftSkipPgvector=true to skip these tests.");
        _runAs = Environment.UserName == "root" ? "postgres" : null;
        StopOrphans();
        _folder = Path.Combine(Path.GetTempPath(), $"mlnetpeft-pg-{Guid.NewGuid():N}");
        Directory.CreateDirectory(_folder);
        File.WriteAllText(Path.Combine(_folder, OwnerFile), Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture));
        if (_runAs is not null) Run("chown", ["-R", _runAs, _folder], asServerUser: false);
        Port = FreePort();
        var data = Path.Combine(_folder, "data");
        Run(Path.Combine(_bin, "initdb"), ["-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"]);
        Run(Path.Combine(_bin, "pg_ctl"), ["-D", data, "-l", Path.Combine(_folder, "server.log"), "-w", "-t", "60", "-o",
            $"-k {_folder} -c listen_addresses=127.0.0.1 -p {Port} -c fsync=off -c synchronous_commit=off -c full_page_writes=off", "start"]);
        Started = true;
    }

    /// <summary>Why the server is not there (tests skip with it), or null.</summary>
    public string? Unavailable { get; }

    public int Port { get; }

    private bool Started { get; }

    /// <summary>The connection string of a new, empty database on the server (one per store under test, so tests do not meet).</summary>
    public string NewDatabase()
    {
        var name = $"test_{Interlocked.Increment(ref _databases)}_{Guid.NewGuid():N}"[..30];
        Run(Path.Combine(_bin, "createdb"), ["-h", "127.0.0.1", "-p", Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-U", "postgres", name]);
        return $"Host=127.0.0.1;Port={Port};Username=postgres;Database={name};Pooling=true";
    }

    public void Dispose()
    {
        if (Started)
        {
            try { Run(Path.Combine(_bin, "pg_ctl"), ["-D", Path.Combine(_folder, "data"), "-m", "immediate", "-w", "stop"]); }
            catch (InvalidOperationException) { /* already gone: the folder is removed all the same */ }
        }
        if (_folder.Length > 0 && Directory.Exists(_folder)) Directory.Delete(_folder, recursive: true);
    }

    private const string OwnerFile = "owner.pid";

    /// <summary>Servers left by test processes that died before disposing them (a killed run): stopped, their folders removed.</summary>
    private void StopOrphans()
    {
        foreach (var folder in Directory.GetDirectories(Path.GetTempPath(), "mlnetpeft-pg-*"))
        {
            var owner = Path.Combine(folder, OwnerFile);
            if (!File.Exists(owner) || !int.TryParse(File.ReadAllText(owner), out var pid) || IsAlive(pid)) continue;
            try
            {
                if (File.Exists(Path.Combine(folder, "data", "postmaster.pid")))
                    Run(Path.Combine(_bin, "pg_ctl"), ["-D", Path.Combine(folder, "data"), "-m", "immediate", "-w", "stop"]);
            }
            catch (InvalidOperationException) { /* not running any more */ }
            try { Directory.Delete(folder, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    private static bool IsAlive(int pid)
    {
        try { return !Process.GetProcessById(pid).HasExited; }
        catch (ArgumentException) { return false; }
    }

    private static string? FindBinFolder()
    {
        if (!Directory.Exists("/usr/lib/postgresql")) return null;
        return Directory.GetDirectories("/usr/lib/postgresql")
            .Select(d => (Dir: d, Version: int.TryParse(Path.GetFileName(d), out var v) ? v : -1))
            .Where(d => d.Version > 0 && File.Exists(Path.Combine(d.Dir, "bin", "initdb")) && File.Exists($"/usr/share/postgresql/{d.Version}/extension/vector.control"))
            .OrderByDescending(d => d.Version).Select(d => Path.Combine(d.Dir, "bin")).FirstOrDefault();
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private void Run(string program, string[] arguments, bool asServerUser = true)
    {
        var start = asServerUser && _runAs is not null
            ? new ProcessStartInfo("runuser", ["-u", _runAs, "--", program, .. arguments])
            : new ProcessStartInfo(program, arguments);
        start.RedirectStandardOutput = start.RedirectStandardError = true;
        start.WorkingDirectory = string.IsNullOrEmpty(_folder) || !Directory.Exists(_folder) ? Path.GetTempPath() : _folder;
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(120_000)) { process.Kill(entireProcessTree: true); throw new InvalidOperationException($"{program} did not finish in 120 s."); }
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"{Path.GetFileName(program)} {string.Join(' ', arguments)} failed ({process.ExitCode}): {error.Result}{output.Result}");
    }
}
