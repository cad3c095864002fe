using System.Text.RegularExpressions;
using MLNetPeft.Architectures;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Lora;

/// <summary>
/// LoRA applied to a model (HF PEFT's <c>LoraModel</c>): adapters on the target linear layers, base weights frozen.
/// Works on any TorchSharp module whose linear layers are invoked with <c>call()</c> (all of this library's
/// architectures); the model object stays the same and keeps its HF parameter names.
/// </summary>
public sealed class LoraModel : IDisposable
{
    private readonly nn.Module _model;
    private readonly List<LoraAdapter> _adapters;

    private LoraModel(nn.Module model, LoraConfig config, string adapterName, List<LoraAdapter> adapters)
    {
        _model = model;
        Config = config;
        AdapterName = adapterName;
        _adapters = adapters;
    }

    public LoraConfig Config { get; }
    public string AdapterName { get; }
    public IReadOnlyList<LoraAdapter> Adapters => _adapters;

    /// <summary>Query and value projections: LoRA's original targets (PEFT's defaults per family).</summary>
    public static IReadOnlyList<string> DefaultTargets(nn.Module model) => model switch
    {
        Gpt2ForCausalLM => ["c_attn"],
        BertModel => ["query", "value"],
        _ => ["q_proj", "v_proj"],
    };

    /// <summary>
    /// Attaches adapters to every target layer of <paramref name="model"/> and freezes everything else (but the
    /// biases that <see cref="LoraConfig.Bias"/> names). Adapter A matrices are drawn from <paramref name="seed"/>.
    /// </summary>
    public static LoraModel Apply(nn.Module model, LoraConfig config, string adapterName = "default", long seed = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        config.Validate();
        if (string.IsNullOrWhiteSpace(adapterName) || adapterName.Contains('.'))
            throw new ArgumentException($"Adapter name '{adapterName}' must be non-empty and contain no '.'.", nameof(adapterName));
        var linear = model.named_modules().Where(m => m.module is Linear or Conv1D)
            .Select(m => (m.name, layer: (nn.Module<Tensor, Tensor>)m.module)).ToList();
        var targets = SelectTargets(model, linear, config);

        foreach (var (_, p) in model.named_parameters()) p.requires_grad = false;
        var generator = new Generator((ulong)seed);
        var adapters = targets.Select(t => new LoraAdapter(t.name, t.layer, config, adapterName, generator)).ToList();
        foreach (var a in adapters) { a.LoraA.requires_grad = true; a.LoraB.requires_grad = true; }
        switch (config.Bias)
        {
            case LoraBias.All:
                foreach (var (name, p) in model.named_parameters()) if (name.EndsWith(".bias", StringComparison.Ordinal)) p.requires_grad = true;
                break;
            case LoraBias.LoraOnly:
                foreach (var a in adapters) if (a.BaseBias is { } b) b.requires_grad = true;
                break;
        }
        return new LoraModel(model, config, adapterName, adapters);
    }

    private static List<(string name, nn.Module<Tensor, Tensor> layer)> SelectTargets(nn.Module model,
        List<(string name, nn.Module<Tensor, Tensor> layer)> linear, LoraConfig config)
    {
        if (config.TargetModulesRegex is { } pattern)
        {
            var regex = new Regex($"^(?:{pattern})$", RegexOptions.CultureInvariant);
            var matched = linear.Where(l => regex.IsMatch(l.name)).ToList();
            if (matched.Count == 0)
                throw new ArgumentException($"The target-module pattern '{pattern}' matches no linear layer. Available: {Available(linear)}.", nameof(config));
            return matched;
        }
        var names = config.TargetModules ?? DefaultTargets(model);
        if (names.Count == 1 && names[0] == LoraConfig.AllLinear)
        {
            // PEFT's "all-linear": every linear layer but the output head.
            return linear.Where(l => l.name != "lm_head").ToList();
        }
        var unknown = names.Where(n => !linear.Any(l => l.name == n || l.name.EndsWith("." + n, StringComparison.Ordinal))).ToList();
        if (unknown.Count > 0)
            throw new ArgumentException($"Target module(s) {string.Join(", ", unknown.Select(u => $"'{u}'"))} match no linear layer of this {model.GetType().Name}. Available: {Available(linear)}.", nameof(config));
        return linear.Where(l => names.Any(n => l.name == n || l.name.EndsWith("." + n, StringComparison.Ordinal))).ToList();
    }

    private static string Available(List<(string name, nn.Module<Tensor, Tensor> layer)> linear) =>
        string.Join(", ", linear.Select(l => l.name.Split('.')[^1]).Distinct()) + $", {LoraConfig.AllLinear}";

    /// <summary>Trainable and total parameter counts (PEFT's print_trainable_parameters).</summary>
    public (long Trainable, long Total) ParameterCounts()
    {
        var all = _model.parameters().ToList();
        return (all.Where(p => p.requires_grad).Sum(p => p.numel()), all.Sum(p => p.numel()));
    }

    /// <summary>Disables (false) or enables every adapter; disabled, the model computes exactly what the base model does.</summary>
    public void SetAdaptersEnabled(bool enabled)
    {
        foreach (var a in _adapters) a.Enabled = enabled;
    }

    public void Merge() { foreach (var a in _adapters) a.Merge(); }
    public void Unmerge() { foreach (var a in _adapters) a.Unmerge(); }

    /// <summary>Merges every adapter into its base weight, then removes the adapters: the model is a plain model again.</summary>
    public void MergeAndUnload()
    {
        Merge();
        RemoveAdapters();
    }

    /// <summary>Removes the adapters without merging: merged ones are subtracted again, so the base model is restored.</summary>
    public void Unload()
    {
        Unmerge();
        RemoveAdapters();
    }

    private void RemoveAdapters()
    {
        var modules = _model.named_modules().ToDictionary(m => m.name, m => m.module);
        foreach (var a in _adapters)
        {
            a.Dispose();
            ModuleSurgery.RemoveChild(modules[a.ModuleName], "lora_A");
            ModuleSurgery.RemoveChild(modules[a.ModuleName], "lora_B");
        }
        _adapters.Clear();
    }

    /// <summary>The adapter weights under PEFT's adapter-file names (<c>base_model.model.{module}.lora_A.weight</c>).</summary>
    public Dictionary<string, Tensor> AdapterStateDict()
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var a in _adapters)
        {
            result[$"base_model.model.{a.ModuleName}.lora_A.weight"] = a.LoraA;
            result[$"base_model.model.{a.ModuleName}.lora_B.weight"] = a.LoraB;
        }
        if (Config.Bias != LoraBias.None)
        {
            foreach (var (name, p) in _model.named_parameters().Where(p => p.parameter.requires_grad && p.name.EndsWith(".bias", StringComparison.Ordinal)))
                result[$"base_model.model.{name}"] = p;
        }
        return result;
    }

    public void Dispose()
    {
        foreach (var a in _adapters) a.Dispose();
    }
}
