using System.Text.RegularExpressions;
using MLNetPeft.Architectures;
using TorchSharp.Modules;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners;

/// <summary>
/// PEFT's target_modules matching, shared by the methods that attach to linear layers: a module matches a name when
/// its full name equals it or ends with "." + it; a regular expression must match the full name; "all-linear" takes
/// every linear layer but the output head (lm_head, or a classifier's "classifier"/"score").
/// </summary>
public static class TargetModules
{
    /// <summary>The special target value meaning every linear layer except the output head.</summary>
    public const string AllLinear = "all-linear";

    /// <summary>The model's linear layers (nn.Linear and GPT-2's Conv1D) with their full names.</summary>
    public static List<(string Name, nn.Module<Tensor, Tensor> Layer)> LinearLayers(nn.Module model) =>
        model.named_modules().Where(m => m.module is Linear or Conv1D).Select(m => (m.name, (nn.Module<Tensor, Tensor>)m.module)).ToList();

    /// <summary>
    /// A linear layer's sizes, and whether its weight is stored [in, out] (GPT-2's Conv1D, PEFT's fan_in_fan_out)
    /// rather than [out, in] (nn.Linear); other layers are refused, naming <paramref name="method"/>.
    /// </summary>
    internal static (long In, long Out, bool FanInFanOut) Shape(nn.Module<Tensor, Tensor> layer, string moduleName, string method) => layer switch
    {
        Linear l => (l.in_features, l.out_features, false),
        Conv1D c => (c.Weight.shape[0], c.Weight.shape[1], true),
        _ => throw new NotSupportedException($"{method} cannot wrap '{moduleName}' ({layer.GetType().Name}); it supports linear layers (Linear, Conv1D)."),
    };

    /// <summary>The weight of a linear layer (nn.Linear or Conv1D), in its own layout.</summary>
    internal static Parameter Weight(nn.Module layer) => layer switch
    {
        Linear l => l.weight!,
        Conv1D c => c.Weight,
        _ => throw new InvalidOperationException($"{layer.GetType().Name} is not a linear layer."),
    };

    /// <summary>The bias of a linear layer, or null.</summary>
    internal static Parameter? Bias(nn.Module layer) => layer switch { Linear l => l.bias, Conv1D c => c.Bias, _ => null };

    /// <summary>Output layers that "all-linear" leaves out, as PEFT does (its SEQ_CLS_HEAD_NAMES and the output embeddings).</summary>
    public static readonly IReadOnlySet<string> OutputHeads = new HashSet<string>(["lm_head", "classifier", "score"], StringComparer.Ordinal);

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
            var pattern = FullNamePattern(regex, option);
            var matched = linear.Where(l => IsMatch(pattern, l.Name, option)).ToList();
            if (matched.Count == 0)
                throw new ArgumentException($"The {option} pattern '{regex}' matches no linear layer. Available: {Available(linear)}.", option);
            return matched;
        }
        names ??= defaults;
        // PEFT's all-linear leaves out the output layer: the LM head, and a sequence classifier's head ("classifier", "score").
        if (names.Count == 1 && names[0] == AllLinear) return linear.Where(l => !OutputHeads.Contains(l.Name)).ToList();
        var unknown = names.Where(n => !linear.Any(l => Matches(l.Name, n))).ToList();
        if (unknown.Count > 0)
            throw new ArgumentException($"{option} {string.Join(", ", unknown.Select(u => $"'{u}'"))} match(es) no linear layer of this {model.GetType().Name}. Available: {Available(linear)}.", option);
        return linear.Where(l => names.Any(n => Matches(l.Name, n))).ToList();
    }

    /// <summary>How long one match of a pattern from a config may take: patterns in adapter files are untrusted input.</summary>
    internal static readonly TimeSpan MatchTimeout = TimeSpan.FromSeconds(1);

    /// <summary>A pattern that must match a whole module name, compiled with <see cref="MatchTimeout"/>; an invalid one is named.</summary>
    internal static Regex FullNamePattern(string pattern, string option)
    {
        try { return new Regex($"^(?:{pattern})$", RegexOptions.CultureInvariant, MatchTimeout); }
        catch (ArgumentException e) { throw new ArgumentException($"The {option} pattern '{pattern}' is not a valid regular expression: {e.Message}", option, e); }
    }

    /// <summary>Matches with the timeout; a pattern that runs too long is an error naming it, not a hang.</summary>
    internal static bool IsMatch(Regex pattern, string name, string option)
    {
        try { return pattern.IsMatch(name); }
        catch (RegexMatchTimeoutException e) { throw new ArgumentException($"The {option} pattern '{pattern}' took longer than {MatchTimeout.TotalSeconds} s on '{name}'.", option, e); }
    }

    private static string Available(List<(string Name, nn.Module<Tensor, Tensor> Layer)> linear) =>
        string.Join(", ", linear.Select(l => l.Name.Split('.')[^1]).Distinct()) + $", {AllLinear}";

    // A quantised layer (QLoRA) computes its product itself and hands nn.Linear an empty input; the methods that read a
    // layer's input (LoRA, AdaLoRA) take it from here instead. Set in the layer's pre-hook, cleared after its call.
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<nn.Module, QuantizedLayer> QuantizedInputs = new();

    private sealed class QuantizedLayer(long weightElements)
    {
        public long WeightElements { get; } = weightElements;
        public Tensor? Input { get; set; }
    }

    /// <summary>
    /// Marks <paramref name="layer"/> as one whose forward pass another component computes (an NF4-quantised layer
    /// whose weight of <paramref name="weightElements"/> elements is held outside its parameters).
    /// </summary>
    internal static void MarkQuantized(nn.Module layer, long weightElements) => QuantizedInputs.AddOrUpdate(layer, new QuantizedLayer(weightElements));

    internal static void UnmarkQuantized(nn.Module layer) => QuantizedInputs.Remove(layer);

    /// <summary>Whether <paramref name="layer"/> holds a quantised weight (no full-precision weight to merge into or to read).</summary>
    public static bool IsQuantized(nn.Module layer) => QuantizedInputs.TryGetValue(layer, out _);

    /// <summary>Elements of the weights that quantised layers in <paramref name="model"/> hold outside their parameters.</summary>
    internal static long QuantizedWeightElements(nn.Module model) =>
        model.modules().Sum(m => QuantizedInputs.TryGetValue(m, out var q) ? q.WeightElements : 0);

    /// <summary>Holds the input a quantised layer was called with, for the duration of the call.</summary>
    internal static void SetCallInput(nn.Module layer, Tensor? input)
    {
        if (QuantizedInputs.TryGetValue(layer, out var q)) q.Input = input;
    }

    /// <summary>The input the layer was called with: <paramref name="input"/>, or a quantised layer's own (its nn.Linear sees an empty one).</summary>
    internal static Tensor CallInput(nn.Module layer, Tensor input) =>
        QuantizedInputs.TryGetValue(layer, out var q) && q.Input is { } original ? original : input;

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
