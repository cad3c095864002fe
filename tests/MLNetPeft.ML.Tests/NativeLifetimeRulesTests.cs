using Mono.Cecil;
using Mono.Cecil.Cil;

namespace MLNetPeft.ML.Tests;

/// <summary>
/// TorchSharp turns C# numbers into native <c>Scalar</c>s implicitly (<c>x * 0.5</c>, <c>pow(2)</c>, and the alpha of 1
/// inside <c>a + b</c>) and never disposes them: the finalizer frees them, possibly while libtorch is still reading one
/// ("Unknown scalar type", heap corruption), and dispose scopes do not manage Scalars. So library code creates
/// Scalars only through <c>MLNetPeft.Runtime.Scalars</c>, which keeps them referenced. This test reads the IL of every
/// library assembly and fails on any call that makes a Scalar elsewhere: an implicit conversion, <c>ToScalar</c>, or a
/// TorchSharp method that makes one inside (followed through TorchSharp's own calls).
/// </summary>
public class NativeLifetimeRulesTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private const string ScalarsType = "MLNetPeft.Runtime.Scalars";

    [Fact]
    public void LibraryCodeMakesNoScalarThatTheFinalizerWouldFree()
    {
        var folder = AppContext.BaseDirectory;
        var resolver = new DefaultAssemblyResolver();
        resolver.AddSearchDirectory(folder);
        var library = Directory.GetFiles(folder, "MLNetPeft.*.dll")
            .Where(f => !Path.GetFileName(f).Contains(".Tests", StringComparison.Ordinal) && !Path.GetFileName(f).Contains("FreshProcess", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal).ToList();
        Assert.Contains(library, f => f.EndsWith("MLNetPeft.Models.dll", StringComparison.Ordinal));
        Assert.Contains(library, f => f.EndsWith("MLNetPeft.Tuners.dll", StringComparison.Ordinal));
        var memo = new Dictionary<string, bool>(StringComparer.Ordinal);
        var offences = new List<string>();
        foreach (var path in library)
        {
            using var assembly = AssemblyDefinition.ReadAssembly(path, new ReaderParameters { AssemblyResolver = resolver });
            foreach (var type in assembly.MainModule.GetTypes().Where(t => t.FullName != ScalarsType && !t.FullName.StartsWith(ScalarsType + "/", StringComparison.Ordinal)))
                foreach (var method in type.Methods.Where(m => m.HasBody))
                    foreach (var call in Calls(method))
                        if (MakesScalar(call, memo, 0))
                            offences.Add($"{type.FullName}.{method.Name} calls {call.DeclaringType.Name}.{call.Name}({string.Join(", ", call.Parameters.Select(p => p.ParameterType.Name))})");
        }
        foreach (var o in offences.Distinct()) output.WriteLine(o);
        Assert.True(offences.Count == 0, $"{offences.Count} call(s) make a Scalar the finalizer frees; use MLNetPeft.Runtime.Scalars:\n" + string.Join("\n", offences.Distinct()));
    }

    private static IEnumerable<MethodReference> Calls(MethodDefinition method) =>
        method.Body.Instructions.Where(i => i.OpCode == OpCodes.Call || i.OpCode == OpCodes.Callvirt || i.OpCode == OpCodes.Newobj)
            .Select(i => (MethodReference)i.Operand);

    private static bool IsScalarFactory(MethodReference m) =>
        (m.DeclaringType.FullName == "TorchSharp.Scalar" && m.Name == "op_Implicit") ||
        (m.DeclaringType.FullName == "TorchSharp.ScalarExtensionMethods" && m.Name == "ToScalar");

    /// <summary>Whether calling <paramref name="method"/> makes a Scalar that nobody disposes (TorchSharp's methods followed inside).</summary>
    private static bool MakesScalar(MethodReference method, Dictionary<string, bool> memo, int depth)
    {
        if (IsScalarFactory(method)) return true;
        if (!method.DeclaringType.Scope.Name.StartsWith("TorchSharp", StringComparison.Ordinal) || depth > 8) return false;
        if (memo.TryGetValue(method.FullName, out var known)) return known;
        memo[method.FullName] = false;   // recursion guard
        MethodDefinition? definition;
        try { definition = method.Resolve(); }
        catch (AssemblyResolutionException) { return false; }
        bool makes = false;
        if (definition is { HasBody: true })
        {
            var calls = Calls(definition).ToList();
            // A TorchSharp method that disposes what it made is fine.
            bool disposes = calls.Any(c => c.DeclaringType.FullName == "TorchSharp.Scalar" && c.Name == "Dispose");
            makes = !disposes && calls.Any(c => MakesScalar(c, memo, depth + 1));
        }
        memo[method.FullName] = makes;
        return makes;
    }
}
