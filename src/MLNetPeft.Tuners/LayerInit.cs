using MLNetPeft.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners;

/// <summary>
/// PyTorch's default initialisation of the layers a tuner builds (Linear: weight and bias U(±1/√in), which is
/// kaiming_uniform_(a = √5); Embedding: N(0, 1)), drawn from the caller's generator instead of libtorch's
/// process-wide one, so a seed alone fixes the result whatever other threads draw.
/// </summary>
internal static class LayerInit
{
    /// <summary>Re-initialises every Linear and Embedding inside <paramref name="module"/> from <paramref name="generator"/>, in module order.</summary>
    public static T Reset<T>(T module, Generator generator) where T : nn.Module
    {
        using var _ = no_grad();
        // TorchSharp's named_modules() leaves out the module itself.
        foreach (var child in module.named_modules().Select(m => m.module).Prepend(module))
        {
            switch (child)
            {
                case Linear linear:
                    double bound = 1.0 / Math.Sqrt(linear.in_features);
                    linear.weight!.uniform_(-bound, bound, generator);
                    linear.bias?.uniform_(-bound, bound, generator);
                    break;
                case Embedding embedding:
                    embedding.weight!.normal_(0, 1, generator);
                    break;
            }
        }
        return module;
    }
}
