using System.Text.RegularExpressions;
using MLNetPeft.Architectures;
using TorchSharp.Modules;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners;

/// <summary>
/// PEFT's target_modules matching, shared by the methods that attach to linear layers: a module matches a name when
/// its full name equals it or ends with "." + it; a regular expression must match the full name; "all-linear" takes
/// every linear layer but the output head.
/// </summary>
public static class TargetModules
{
    /// <summary>The special target value meaning every linear layer except the output head.</summary>
    public const string AllLinear = "all-linear";

    /// <summary>The model's linear layers (nn.Linear and GPT-2's Conv1D) with their full names.</summary>
    public static List<(string Name, nn.Module<Tensor, Tensor> Layer)> LinearLayers(nn.Module model) =>
        model.named_modules().Where(m => m.module is Linear or Conv1D).Select(m => (m.name, (nn.Module<Tensor, Tensor>)m.module)).ToList();

    public static bool Matches(string moduleName, string target) =>
        moduleName == target || moduleName.EndsWith("." + target, StringComparison.Ordinal);

    /// <summary>
    /// The linear layers selected by <paramref name="names"/> or <paramref name="regex"/> (at most one given; neither
    /// means <paramref name="defaults"/>). Unknown names or a pattern matching nothing throw, listing the available layers.
    /// </summary>
    public static List<(string Name, nn.Module<Tensor, Tensor> Layer)> Select(nn.Module model, IReadOnlyList<string>? names, string? regex,
        IReadOnlyList<string> defaults, string option = "target_modules")
    {
        var linear = LinearLayers(model);
        if (regex is not null)
        {
            var pattern = new Regex($"^(?:{regex})$", RegexOptions.CultureInvariant);
            var matched = linear.Where(l => pattern.IsMatch(l.Name)).ToList();
            if (matched.Count == 0)
                throw new ArgumentException($"The {option} pattern '{regex}' matches no linear layer. Available: {Available(linear)}.", option);
            return matched;
        }
        names ??= defaults;
        if (names.Count == 1 && names[0] == AllLinear) return linear.Where(l => l.Name != "lm_head").ToList();
        var unknown = names.Where(n => !linear.Any(l => Matches(l.Name, n))).ToList();
        if (unknown.Count > 0)
            throw new ArgumentException($"{option} {string.Join(", ", unknown.Select(u => $"'{u}'"))} match(es) no linear layer of this {model.GetType().Name}. Available: {Available(linear)}.", option);
        return linear.Where(l => names.Any(n => Matches(l.Name, n))).ToList();
    }

    private static string Available(List<(string Name, nn.Module<Tensor, Tensor> Layer)> linear) =>
        string.Join(", ", linear.Select(l => l.Name.Split('.')[^1]).Distinct()) + $", {AllLinear}";

    /// <summary>
    /// Registers <paramref name="child"/> (a module, PEFT's ModuleDict entry, or a parameter, a ParameterDict entry) as
    /// <c>{group}.{adapterName}</c> under <paramref name="layer"/>, creating the group on first use.
    /// </summary>
    internal static void RegisterAdapterChild(nn.Module layer, string group, string adapterName, object child)
    {
        var existing = layer.named_children().FirstOrDefault(c => c.name == group).module;
        if (existing is null)
        {
            existing = new Architectures.Layers.Container(child is nn.Module ? "ModuleDict" : "ParameterDict");
            layer.register_module(group, existing);
        }
        if (existing.named_children().Any(c => c.name == adapterName) || existing.named_parameters(recurse: false).Any(p => p.name == adapterName))
            throw new InvalidOperationException($"A layer already has an adapter named '{adapterName}' in {group}; pick another adapter name.");
        if (child is nn.Module module) existing.register_module(adapterName, module);
        else existing.register_parameter(adapterName, (Parameter)child);
    }

    /// <summary>Removes <c>{group}.{adapterName}</c> from <paramref name="layer"/>, and the group once it is empty.</summary>
    internal static void RemoveAdapterChild(nn.Module layer, string group, string adapterName)
    {
        var existing = layer.named_children().FirstOrDefault(c => c.name == group).module;
        if (existing is null) return;
        ModuleSurgery.RemoveChild(existing, adapterName);
        ModuleSurgery.RemoveParameter(existing, adapterName);
        if (!existing.named_children().Any() && !existing.named_parameters(recurse: false).Any()) ModuleSurgery.RemoveChild(layer, group);
    }
}
