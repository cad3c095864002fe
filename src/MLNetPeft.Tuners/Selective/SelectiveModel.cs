using System.Text.Json.Nodes;
using MLNetPeft.Architectures.Layers;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Selective;

/// <summary>
/// Selective tuning applied to a model: the chosen parameters (biases for BitFit, normalisation scales and biases for
/// LayerNorm tuning) train in place and everything else is frozen. Their original values are kept, so the adapter
/// can be disabled (the base model exactly) and unloaded.
/// </summary>
public sealed class SelectiveModel : PeftModel
{
    private readonly List<(string Name, Parameter Parameter, Tensor Original)> _tuned;
    private Tensor[]? _trainedWhileDisabled;

    private SelectiveModel(nn.Module model, SelectiveConfig config, List<(string, Parameter, Tensor)> tuned) : base(model, config, "default") =>
        _tuned = tuned;

    public new SelectiveConfig Config => (SelectiveConfig)base.Config;
    /// <summary>Names of the parameters that train.</summary>
    public IReadOnlyList<string> TunedParameters => _tuned.Select(t => t.Name).ToList();

    public static SelectiveModel Apply(nn.Module model, SelectiveConfig config) =>
        Scoped(model, () => ApplyCore(model, config));

    private static SelectiveModel ApplyCore(nn.Module model, SelectiveConfig config)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        var names = Selected(model, config.Tuning);
        if (names.Count == 0)
            throw new ArgumentException(config.Tuning == SelectiveTuning.BitFit
                ? $"BitFit trains bias terms, and this {model.GetType().Name} has none (Llama-family layers have no biases); pick another method."
                : $"LayerNorm tuning found no LayerNorm or RMSNorm layer in this {model.GetType().Name}.", nameof(config));
        return Tune(model, config, names);
    }

    private static SelectiveModel Tune(nn.Module model, SelectiveConfig config, IReadOnlyCollection<string> names)
    {
        var parameters = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var p in parameters.Values) p.requires_grad = false;
        var tuned = new List<(string, Parameter, Tensor)>();
        foreach (var name in names)
        {
            var p = parameters[name];
            p.requires_grad = true;
            tuned.Add((name, p, p.detach().clone().DetachFromDisposeScope()));
        }
        return new SelectiveModel(model, config, tuned);
    }

    /// <summary>The parameters a selective method trains in <paramref name="model"/>.</summary>
    public static IReadOnlyList<string> Selected(nn.Module model, SelectiveTuning tuning)
    {
        if (tuning == SelectiveTuning.BitFit)
            return model.named_parameters().Select(p => p.name).Where(n => n.EndsWith(".bias", StringComparison.Ordinal) || n == "bias").ToList();
        var norms = model.named_modules().Where(m => m.module is LayerNorm or RmsNorm).Select(m => m.name).ToList();
        return model.named_parameters().Select(p => p.name)
            .Where(n => norms.Any(m => n.StartsWith(m + ".", StringComparison.Ordinal) && !n[(m.Length + 1)..].Contains('.'))).ToList();
    }

    internal static SelectiveModel Load(nn.Module model, string folder, JsonObject json, string path, out IReadOnlyList<string> unusedKeys)
    {
        var type = PeftAdapterFiles.PeftType(json, path);
        var config = new SelectiveConfig { Tuning = type == SelectiveConfig.BitFitType ? SelectiveTuning.BitFit : SelectiveTuning.LayerNorm };
        var known = model.named_parameters().Select(p => p.name).ToHashSet(StringComparer.Ordinal);
        List<string> names;
        using (var file = PeftAdapterFiles.OpenWeights(folder))
        {
            var stored = file.TensorNames.Where(n => n.StartsWith(PeftAdapterFiles.KeyPrefix, StringComparison.Ordinal)).Select(n => n[PeftAdapterFiles.KeyPrefix.Length..]);
            // LN_TUNING keeps a trained copy of each norm as {norm}.ln_tuning_layers.{weight|bias}; the other types name the parameter itself.
            names = (type == SelectiveConfig.LayerNormType ? stored.Where(n => n.Contains(LnTuningInfix, StringComparison.Ordinal)).Select(n => n.Replace(LnTuningInfix, ".", StringComparison.Ordinal)) : stored).ToList();
        }
        var missing = names.Where(n => !known.Contains(n)).ToList();
        if (missing.Count > 0) throw new InvalidDataException($"'{path}': the adapter tunes {string.Join(", ", missing)}, which this {model.GetType().Name} does not have.");
        if (names.Count == 0) throw new InvalidDataException($"'{path}': the adapter file holds no tuned parameters.");
        var selective = Tune(model, config, names);
        unusedKeys = PeftAdapterFiles.ReadWeights(selective, folder);
        return selective;
    }

    private const string LnTuningInfix = ".ln_tuning_layers.";

    /// <summary>The tuned tensors under their adapter-file names (LN_TUNING's <c>{norm}.ln_tuning_layers.{weight}</c>, BitFit's parameter names).</summary>
    public override Dictionary<string, Tensor> AdapterStateDict() =>
        _tuned.ToDictionary(t => PeftAdapterFiles.KeyPrefix + FileName(t.Name), t => (Tensor)t.Parameter, StringComparer.Ordinal);

    private string FileName(string parameter)
    {
        if (Config.Tuning == SelectiveTuning.BitFit) return parameter;
        int dot = parameter.LastIndexOf('.');
        return parameter[..dot] + LnTuningInfix + parameter[(dot + 1)..];
    }

    /// <summary>Files written before LN_TUNING used PEFT's names stored each tuned parameter under its own name.</summary>
    internal override IEnumerable<string> FileKeyAliases(string key)
    {
        if (key.Contains(LnTuningInfix, StringComparison.Ordinal)) yield return key.Replace(LnTuningInfix, ".", StringComparison.Ordinal);
    }

    internal override void DescribeTargets(JsonObject config)
    {
        if (Config.Tuning != SelectiveTuning.LayerNorm) return;
        // PEFT matches target_modules by the end of a module's name: the norms' own names, each once.
        config["target_modules"] = new JsonArray(_tuned.Select(t => t.Name[..t.Name.LastIndexOf('.')].Split('.')[^1]).Distinct()
            .Select(n => (JsonNode)JsonValue.Create(n)!).ToArray());
    }

    public override void SetAdaptersEnabled(bool enabled)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        if (!enabled && _trainedWhileDisabled is null)
        {
            _trainedWhileDisabled = _tuned.Select(t => t.Parameter.detach().clone().DetachFromDisposeScope()).ToArray();
            foreach (var (_, p, original) in _tuned) p.copy_(original);
        }
        else if (enabled && _trainedWhileDisabled is { } trained)
        {
            for (int i = 0; i < _tuned.Count; i++) _tuned[i].Parameter.copy_(trained[i]);
            foreach (var t in trained) t.Dispose();
            _trainedWhileDisabled = null;
        }
    }

    /// <summary>The tuned values already are the model's weights; the saved originals are dropped.</summary>
    public override void MergeAndUnload()
    {
        SetAdaptersEnabled(true);
        foreach (var (_, _, original) in _tuned) original.Dispose();
        _tuned.Clear();
    }

    public override void Unload()
    {
        SetAdaptersEnabled(false);
        _trainedWhileDisabled = null;
        foreach (var (_, _, original) in _tuned) original.Dispose();
        _tuned.Clear();
    }
}
