using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Architectures.Layers;

/// <summary>The activation functions named by HF configs (<c>hidden_act</c>, <c>activation_function</c>).</summary>
public static class Activations
{
    public static readonly IReadOnlyList<string> Supported = ["gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish"];

    public static Func<Tensor, Tensor> Get(string name, string field) => name switch
    {
        "gelu" => x => nn.functional.gelu(x),
        // GPT-2's "gelu_new" and the others below are all the tanh approximation of GELU.
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => x => nn.functional.gelu(x, GELU.Approximate.tanh),
        "relu" => x => nn.functional.relu(x),
        "silu" or "swish" => x => nn.functional.silu(x),
        _ => throw new NotSupportedException($"'{field}' = '{name}' is not supported; use one of {string.Join(", ", Supported)}."),
    };
}
