using Mono.Cecil;

// Publicizer <outputFolder> <assembly.dll>...
// Writes copies of the assemblies in which every type, method and field is public, for the compiler only: the
// program still runs against the original assemblies, and the calling assembly declares IgnoresAccessChecksTo for them.
// Overridable members that were protected, private protected or protected internal become protected, so that
// overrides in another assembly compile.
if (args.Length < 2)
{
    Console.Error.WriteLine("usage: Publicizer <outputFolder> <assembly.dll>...");
    return 2;
}
var output = args[0];
Directory.CreateDirectory(output);
var resolver = new DefaultAssemblyResolver();
foreach (var folder in args.Skip(1).Select(Path.GetDirectoryName).Distinct()) resolver.AddSearchDirectory(folder!);
foreach (var input in args.Skip(1))
{
    var target = Path.Combine(output, Path.GetFileName(input));
    if (File.Exists(target) && File.GetLastWriteTimeUtc(target) >= File.GetLastWriteTimeUtc(input)) continue;
    using (var assembly = AssemblyDefinition.ReadAssembly(input, new ReaderParameters { AssemblyResolver = resolver }))
    {
        foreach (var type in assembly.MainModule.GetTypes())
        {
            if (type.IsNested) type.IsNestedPublic = true;
            else type.IsPublic = true;
            foreach (var method in type.Methods)
            {
                if (method.IsPublic) continue;
                if (method.IsVirtual && (method.IsFamily || method.IsFamilyOrAssembly || method.IsFamilyAndAssembly)) method.IsFamily = true;
                else method.IsPublic = true;
            }
            // An event's backing field shares its name; making it public would make the name ambiguous.
            foreach (var field in type.Fields.Where(f => !f.IsPublic && type.Events.All(e => e.Name != f.Name)))
                field.IsPublic = true;
        }
        var temp = target + ".tmp";
        assembly.Write(temp);
        File.Move(temp, target, overwrite: true);
    }
    Console.WriteLine($"publicized {Path.GetFileName(input)}");
}
return 0;
