using System.Runtime.CompilerServices;

// The only assemblies whose internals this library uses (through eng/PublicizeMlNet.targets); see Persistence/.
[assembly: IgnoresAccessChecksTo("Microsoft.ML.Core")]
[assembly: IgnoresAccessChecksTo("Microsoft.ML.Data")]

namespace System.Runtime.CompilerServices
{
    /// <summary>Tells the runtime to skip access checks from this assembly into the named one (honoured by CoreCLR).</summary>
    [AttributeUsage(AttributeTargets.Assembly, AllowMultiple = true)]
    internal sealed class IgnoresAccessChecksToAttribute(string assemblyName) : Attribute
    {
        public string AssemblyName { get; } = assemblyName;
    }
}
