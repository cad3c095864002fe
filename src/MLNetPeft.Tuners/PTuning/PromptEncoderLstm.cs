using MLNetPeft.Architectures.Layers;
using MLNetPeft.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.PTuning;

/// <summary>
/// The bidirectional, multi-layer LSTM of P-Tuning's prompt encoder (PEFT's <c>lstm_head</c>, an
/// <c>nn.LSTM(batch_first, bidirectional)</c>), with nn.LSTM's parameter names and layout (<c>weight_ih_l{k}</c> [4H, in],
/// <c>weight_hh_l{k}</c> [4H, H], <c>bias_ih_l{k}</c>, <c>bias_hh_l{k}</c>, and <c>…_reverse</c>; gates in the order
/// input, forget, cell, output) and PyTorch's initialisation U(±1/√H). The recurrence is spelled out so that the
/// dropout between layers draws from the training step's generator (<see cref="StepDropout"/>) and the weights from the
/// caller's: libtorch's own LSTM takes both from the process-wide generator. The virtual prompt is short (tens of
/// tokens), so the loop costs little.
/// </summary>
internal sealed class PromptEncoderLstm : nn.Module<Tensor, Tensor>
{
    /// <inheritdoc cref="Architectures.PretrainedModule.RegisterComponents"/>
    protected override void RegisterComponents() { }

    private readonly int _layers;
    private readonly long _hidden;
    private readonly double _dropout;

    public PromptEncoderLstm(long inputSize, long hiddenSize, int layers, double dropout, ScalarType dtype, Generator generator) : base("LSTM")
    {
        _layers = layers;
        _hidden = hiddenSize;
        _dropout = dropout;
        double bound = 1.0 / Math.Sqrt(hiddenSize);
        using var scope = NewDisposeScope();
        for (int layer = 0; layer < layers; layer++)
        {
            long input = layer == 0 ? inputSize : 2 * hiddenSize;
            foreach (var suffix in new[] { "", "_reverse" })
            {
                // nn.LSTM's registration order: weight_ih, weight_hh, bias_ih, bias_hh per layer and direction.
                Add($"weight_ih_l{layer}{suffix}", [4 * hiddenSize, input]);
                Add($"weight_hh_l{layer}{suffix}", [4 * hiddenSize, hiddenSize]);
                Add($"bias_ih_l{layer}{suffix}", [4 * hiddenSize]);
                Add($"bias_hh_l{layer}{suffix}", [4 * hiddenSize]);
            }
        }

        void Add(string name, long[] shape)
        {
            register_parameter(name, (Parameter)new Parameter(empty(shape, dtype).uniform_(-bound, bound, generator)).DetachFromDisposeScope());
        }
    }

    /// <summary>[batch, sequence, input] → [batch, sequence, 2·hidden]: both directions' hidden states, concatenated.</summary>
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        // Looked up on every call: Module.to() replaces the registered parameters.
        var weights = named_parameters(recurse: false).ToDictionary(p => p.name, p => (Tensor)p.parameter, StringComparer.Ordinal);
        var x = input;
        for (int layer = 0; layer < _layers; layer++)
        {
            if (layer > 0) x = StepDropout.Apply(x, _dropout, training);
            var forwards = Run(weights, x, layer, "", reverse: false);
            var backwards = Run(weights, x, layer, "_reverse", reverse: true);
            x = cat([forwards, backwards], -1);
        }
        return x.MoveToOuterDisposeScope();
    }

    private Tensor Run(Dictionary<string, Tensor> weights, Tensor x, int layer, string suffix, bool reverse)
    {
        var wih = weights[$"weight_ih_l{layer}{suffix}"];
        var whh = weights[$"weight_hh_l{layer}{suffix}"];
        var bias = weights[$"bias_ih_l{layer}{suffix}"].Plus(weights[$"bias_hh_l{layer}{suffix}"]);
        long batch = x.shape[0], steps = x.shape[1];
        var projected = x.matmul(wih.t()).Plus(bias);   // [batch, steps, 4H]: the input part of every gate at once
        var h = zeros([batch, _hidden], x.dtype, x.device);
        var c = zeros([batch, _hidden], x.dtype, x.device);
        var outputs = new Tensor[steps];
        for (long i = 0; i < steps; i++)
        {
            long t = reverse ? steps - 1 - i : i;
            var gates = projected.select(1, t).Plus(h.matmul(whh.t())).chunk(4, -1);
            var (inputGate, forgetGate, cellGate, outputGate) = (gates[0].sigmoid(), gates[1].sigmoid(), gates[2].tanh(), gates[3].sigmoid());
            c = (forgetGate * c).Plus(inputGate * cellGate);
            h = outputGate * c.tanh();
            outputs[t] = h;
        }
        return stack(outputs, 1);
    }
}
