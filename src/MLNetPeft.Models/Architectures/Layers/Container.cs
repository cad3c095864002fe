using static TorchSharp.torch;

namespace MLNetPeft.Architectures.Layers;

/// <summary>
/// A module that only groups children under a name, so that parameter names follow HF's nesting
/// (e.g. <c>transformer.h.0…</c> or <c>model.layers.0…</c>) while the forward logic stays in the owning model.
/// </summary>
public sealed class Container : nn.Module
{
    /// <inheritdoc cref="PretrainedModule.RegisterComponents"/>
    protected override void RegisterComponents() { }

    public Container(string name, params (string Name, nn.Module Module)[] children) : base(name)
    {
        foreach (var (childName, module) in children) register_module(childName, module);
    }
}
