using Microsoft.ML;

namespace MLNetPeft.ML.Persistence;

/// <summary>The <see cref="VersionInfo"/> every transformer of the library writes: one format version, read back only as itself.</summary>
internal static class ModelVersions
{
    internal static VersionInfo Of<TLoader>(string modelSignature, string loaderSignature, uint version) =>
        new(modelSignature, verWrittenCur: version, verReadableCur: version, verWeCanReadBack: version,
            loaderAssemblyName: typeof(TLoader).Assembly.FullName, loaderSignature: loaderSignature);
}
