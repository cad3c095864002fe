namespace MLNetPeft.LlamaCpp.Tests;

/// <summary>A temporary folder for a test class's GGUF files (xUnit makes one instance per test), deleted after the test.</summary>
public abstract class FolderPerTestClass(string prefix) : IDisposable
{
    protected string Folder { get; } = Directory.CreateTempSubdirectory(prefix).FullName;

    public void Dispose()
    {
        try { Directory.Delete(Folder, recursive: true); } catch (IOException) { }
        GC.SuppressFinalize(this);
    }
}
