using System.Reflection;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners;

/// <summary>
/// The one place that reaches into TorchSharp's module internals: TorchSharp 0.107 can register a child module but
/// has no public way to remove one, which unloading an adapter needs.
/// </summary>
internal static class ModuleSurgery
{
    private static readonly FieldInfo Submodules =
        typeof(nn.Module).GetField("_internal_submodules", BindingFlags.NonPublic | BindingFlags.Instance)
        ?? throw new MissingFieldException("TorchSharp's Module no longer has _internal_submodules; this build of MLNetPeft needs TorchSharp 0.107.");

    private static readonly FieldInfo Parameters =
        typeof(nn.Module).GetField("_internal_params", BindingFlags.NonPublic | BindingFlags.Instance)
        ?? throw new MissingFieldException("TorchSharp's Module no longer has _internal_params; this build of MLNetPeft needs TorchSharp 0.107.");

    /// <summary>Removes the parameter registered as <paramref name="name"/> directly on <paramref name="parent"/>; returns false when there is none.</summary>
    public static bool RemoveParameter(nn.Module parent, string name)
    {
        if (!parent.named_parameters(recurse: false).Any(p => p.name == name)) return false;
        dynamic parameters = Parameters.GetValue(parent)!;
        return parameters.Remove(name);
    }

    /// <summary>Removes the child registered as <paramref name="name"/>; returns false when there is none.</summary>
    public static bool RemoveChild(nn.Module parent, string name)
    {
        if (!parent.named_children().Any(c => c.name == name)) return false;
        dynamic children = Submodules.GetValue(parent)!;
        return children.Remove(name);
    }
}
