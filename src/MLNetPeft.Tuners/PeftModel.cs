using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners;

/// <summary>
/// A PEFT method applied in place to a model (HF PEFT's tuner models such as <c>LoraModel</c>): the model object
/// stays the same and keeps its parameter names; the method's weights are registered on it under PEFT's names and
/// only they (and what the method chooses) train.
/// </summary>
public abstract class PeftModel : IDisposable
{
    protected PeftModel(nn.Module model, PeftConfig config, string adapterName)
    {
        Model = model;
        Config = config;
        AdapterName = adapterName;
    }

    public nn.Module Model { get; }
    public PeftConfig Config { get; }
    public string AdapterName { get; }

    /// <summary>Trainable and total parameter counts (PEFT's print_trainable_parameters).</summary>
    public (long Trainable, long Total) ParameterCounts()
    {
        var all = Model.parameters().ToList();
        // An NF4-quantised layer's weight is not a parameter; it still counts (PEFT counts 4-bit weights at their logical size).
        return (all.Where(p => p.requires_grad).Sum(p => p.numel()), all.Sum(p => p.numel()) + TargetModules.QuantizedWeightElements(Model));
    }

    /// <summary>The method's weights under PEFT's adapter-file names (<c>base_model.model.{module}.…</c>, no adapter name).</summary>
    public abstract Dictionary<string, Tensor> AdapterStateDict();

    /// <summary>What an adapter file stores (PEFT's saved form); the same as <see cref="AdapterStateDict"/> unless a method saves less.</summary>
    internal virtual Dictionary<string, Tensor> SavedStateDict() => AdapterStateDict();

    /// <summary>Enables or disables this adapter; disabled, the model computes exactly what the base model does.</summary>
    public abstract void SetAdaptersEnabled(bool enabled);

    /// <summary>
    /// Runs the base model until the returned scope is disposed (PEFT's <c>disable_adapter()</c> context), e.g. as
    /// the frozen reference model of PPO or DPO.
    /// </summary>
    public IDisposable DisableAdapters()
    {
        SetAdaptersEnabled(false);
        return new Scope(() => SetAdaptersEnabled(true));
    }

    /// <summary>Folds the method's weights into the base weights and removes the method: a plain model remains.</summary>
    public abstract void MergeAndUnload();

    /// <summary>Removes the method and restores the base model's weights.</summary>
    public abstract void Unload();

    /// <summary>Fields of <c>adapter_config.json</c> that depend on where the method was applied (e.g. target_modules).</summary>
    internal virtual void DescribeTargets(JsonObject config) { }

    /// <summary>Fields that change while the method trains (AdaLoRA's rank_pattern); they win over a loaded file's.</summary>
    internal virtual void DescribeTrainedState(JsonObject config) { }

    /// <summary>Other names an adapter-file key may have in files written by older versions (read, never written).</summary>
    internal virtual IEnumerable<string> FileKeyAliases(string key) => [];

    /// <summary>
    /// The <c>adapter_config.json</c> this adapter was loaded from, or null for a new one. Saving writes its fields back
    /// unchanged (with the trained state updated), so a loaded adapter saves to the config it came with, fields this
    /// library does not use included.
    /// </summary>
    internal JsonObject? SourceConfig { get; set; }

    private readonly List<string> _modulesToSave = [];

    /// <summary>
    /// Modules of the model that train and are saved whole with the adapter (PEFT's modules_to_save, e.g. the
    /// classification head "classifier" or "score"), by module name.
    /// </summary>
    public IReadOnlyList<string> ModulesToSave => _modulesToSave;

    /// <summary>Makes the parameters of <paramref name="modules"/> train and be saved whole in the adapter file (PEFT's modules_to_save).</summary>
    public void SaveModulesWhole(params string[] modules)
    {
        var parameters = Model.named_parameters().ToList();
        foreach (var module in modules)
        {
            var own = parameters.Where(p => p.name.StartsWith(module + ".", StringComparison.Ordinal) && !p.name[(module.Length + 1)..].Contains('.')).ToList();
            if (own.Count == 0)
                throw new ArgumentException($"The model has no module '{module}' with parameters to save whole.", nameof(modules));
            foreach (var (_, p) in own) p.requires_grad = true;
            if (!_modulesToSave.Contains(module)) _modulesToSave.Add(module);
        }
    }

    /// <summary>The parameters of <see cref="ModulesToSave"/> under their adapter-file names (<c>base_model.model.{parameter}</c>).</summary>
    internal Dictionary<string, Tensor> ModulesToSaveStateDict() =>
        Model.named_parameters().Where(p => _modulesToSave.Any(m => p.name.StartsWith(m + ".", StringComparison.Ordinal) && !p.name[(m.Length + 1)..].Contains('.')))
            .ToDictionary(p => PeftAdapterFiles.KeyPrefix + p.name, p => (Tensor)p.parameter, StringComparer.Ordinal);

    public virtual void Dispose() { }

    /// <summary>
    /// Runs a method's construction or loading inside a dispose scope (the library's tensor-lifetime rule, see
    /// <see cref="Runtime.TensorLifetime"/>): temporaries are freed at once, and every weight registered on
    /// <paramref name="model"/> belongs to the model, not to a dispose scope of the caller's.
    /// </summary>
    internal static T Scoped<T>(nn.Module model, Func<T> build)
    {
        using var scope = NewDisposeScope();
        var result = build();
        Runtime.TensorLifetime.OwnTensors(model);
        return result;
    }

    private sealed class Scope(Action onDispose) : IDisposable
    {
        private Action? _onDispose = onDispose;
        public void Dispose()
        {
            _onDispose?.Invoke();
            _onDispose = null;
        }
    }
}
