using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Tokenization;
using MLNetPeft.Tuners;
using MLNetPeft.Tuners.AdaLora;
using MLNetPeft.Tuners.Houlsby;
using MLNetPeft.Tuners.Ia3;
using MLNetPeft.Tuners.Lora;
using MLNetPeft.Tuners.PrefixTuning;
using MLNetPeft.Tuners.PromptTuning;
using MLNetPeft.Tuners.PTuning;
using MLNetPeft.Tuners.QLora;
using MLNetPeft.Tuners.Selective;
using static TorchSharp.torch;

namespace MLNetPeft.ML.FineTuning;

/// <summary>The settings of every PEFT method an estimator can apply (each estimator's options carry them).</summary>
public interface IPeftMethodSettings
{
    LoraConfig Lora { get; }
    AdaLoraConfig AdaLora { get; }
    Ia3Config Ia3 { get; }
    HoulsbyConfig AdapterTuning { get; }
    PromptTuningConfig PromptTuning { get; }
    PTuningConfig PTuning { get; }
    PrefixTuningConfig PrefixTuning { get; }
    Nf4QuantizationConfig Quantization { get; }
}

/// <summary>Applies the chosen method to a model; the one place that maps <see cref="FineTuningMethod"/> to a tuner.</summary>
internal static class PeftMethods
{
    /// <summary>Methods whose weights cannot be folded into the model's (virtual tokens, nonlinear adapters).</summary>
    public static bool CannotMerge(FineTuningMethod method) => method is FineTuningMethod.PromptTuning or FineTuningMethod.PTuning
        or FineTuningMethod.PrefixTuning or FineTuningMethod.PTuningV2 or FineTuningMethod.AdapterTuning;

    /// <summary>Validates the settings of the chosen method (AdaLoRA's need its total_step, which callers settle first).</summary>
    public static void Validate(FineTuningMethod method, IPeftMethodSettings s)
    {
        switch (method)
        {
            case FineTuningMethod.Lora: s.Lora.Validate(); break;
            case FineTuningMethod.QLora:
                s.Lora.Validate();
                ArgumentNullException.ThrowIfNull(s.Quantization, nameof(s.Quantization));
                s.Quantization.Validate();
                if (s.Lora.UseDora) throw new ArgumentException("DoRA needs unquantised base weights; QLoRA uses plain LoRA.", nameof(s.Lora));
                break;
            case FineTuningMethod.Ia3: s.Ia3.Validate(); break;
            case FineTuningMethod.AdapterTuning: s.AdapterTuning.Validate(); break;
            case FineTuningMethod.PromptTuning: s.PromptTuning.Validate(); break;
            case FineTuningMethod.PTuning: s.PTuning.Validate(); break;
            case FineTuningMethod.PrefixTuning or FineTuningMethod.PTuningV2: s.PrefixTuning.Validate(); break;
        }
    }

    /// <summary>NF4-quantises the linear layers of <paramref name="model"/> for QLoRA (frozen) and reports the saving.</summary>
    public static Nf4Model Quantize(nn.Module model, Nf4QuantizationConfig config, IChannel ch)
    {
        var quantized = Nf4Model.Quantize(model, config);
        var (qBytes, fBytes) = quantized.WeightBytes();
        ch.Info($"QLoRA: {quantized.Layers.Count} linear layers NF4-quantised, {qBytes:N0} bytes instead of {fBytes:N0} in float32.");
        return quantized;
    }

    /// <summary>The method applied to <paramref name="model"/> (null for full fine-tuning, where every parameter trains).</summary>
    public static PeftModel? Apply(FineTuningMethod method, nn.Module model, IPeftMethodSettings s, TextTokenizer tokenizer, long seed) => method switch
    {
        FineTuningMethod.Full => null,
        FineTuningMethod.Lora or FineTuningMethod.QLora => LoraModel.Apply(model, s.Lora, seed: seed),
        FineTuningMethod.AdaLora => AdaLoraModel.Apply(model, s.AdaLora, seed: seed),
        FineTuningMethod.Ia3 => Ia3Model.Apply(model, s.Ia3, seed: seed),
        FineTuningMethod.BitFit => SelectiveModel.Apply(model, new SelectiveConfig { Tuning = SelectiveTuning.BitFit }),
        FineTuningMethod.LayerNorm => SelectiveModel.Apply(model, new SelectiveConfig { Tuning = SelectiveTuning.LayerNorm }),
        FineTuningMethod.AdapterTuning => HoulsbyModel.Apply(model, s.AdapterTuning, seed: seed),
        FineTuningMethod.PromptTuning => PromptTuningModel.Apply(Promptable(model, method), s.PromptTuning, tokenizer, seed: seed),
        FineTuningMethod.PTuning => PTuningModel.Apply(Promptable(model, method), s.PTuning, seed: seed),
        FineTuningMethod.PrefixTuning => PrefixTuningModel.Apply(Promptable(model, method), s.PrefixTuning, seed: seed),
        FineTuningMethod.PTuningV2 => PrefixTuningModel.Apply(Promptable(model, method),
            new PrefixTuningConfig { NumVirtualTokens = s.PrefixTuning.NumVirtualTokens, PrefixProjection = false }, seed: seed),
        var m => throw new ArgumentOutOfRangeException(nameof(method), m, "not a FineTuningMethod value"),
    };

    private static IPromptableModel Promptable(nn.Module model, FineTuningMethod method) => model as IPromptableModel
        ?? throw new NotSupportedException($"{method} adds virtual tokens to a causal language model or a BERT encoder; it is not available for a {model.GetType().Name}.");
}
