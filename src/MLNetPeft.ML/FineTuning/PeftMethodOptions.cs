using MLNetPeft.Tuners.AdaLora;
using MLNetPeft.Tuners.Houlsby;
using MLNetPeft.Tuners.Ia3;
using MLNetPeft.Tuners.Lora;
using MLNetPeft.Tuners.PrefixTuning;
using MLNetPeft.Tuners.PromptTuning;
using MLNetPeft.Tuners.PTuning;
using MLNetPeft.Tuners.QLora;

namespace MLNetPeft.ML.FineTuning;

/// <summary>
/// The method settings every tuning estimator's options carry: which <see cref="FineTuningMethod"/> adapts the model and
/// the settings of each method (PEFT's defaults unless an estimator's options say otherwise in their constructor).
/// </summary>
public abstract class PeftMethodOptions : IPeftMethodSettings
{
    /// <summary>How the parameters are adapted; LoRA by default.</summary>
    public FineTuningMethod Method { get; set; } = FineTuningMethod.Lora;
    /// <summary>LoRA settings (PEFT's defaults: r 8, alpha 8, the family's query/value projections).</summary>
    public LoraConfig Lora { get; set; } = new();
    /// <summary>4-bit quantisation of the base for QLoRA (NF4, blocks of 64, double quantisation).</summary>
    public Nf4QuantizationConfig Quantization { get; set; } = new();
    /// <summary>Prompt tuning settings (20 virtual tokens, RANDOM init unless set).</summary>
    public PromptTuningConfig PromptTuning { get; set; } = new();
    /// <summary>P-Tuning settings (20 virtual tokens, MLP encoder).</summary>
    public PTuningConfig PTuning { get; set; } = new();
    /// <summary>Prefix tuning and P-Tuning v2 settings (20 virtual tokens).</summary>
    public PrefixTuningConfig PrefixTuning { get; set; } = new() { PrefixProjection = true };
    /// <summary>Houlsby adapter settings (reduction factor 16, ReLU).</summary>
    public HoulsbyConfig AdapterTuning { get; set; } = new();
    /// <summary>AdaLoRA settings (init_r 12 → target_r 8); total_step defaults to the run's optimizer steps.</summary>
    public AdaLoraConfig AdaLora { get; set; } = new();
    /// <summary>IA3 settings (PEFT's defaults: keys, values and the FFN output projection of the family).</summary>
    public Ia3Config Ia3 { get; set; } = new();

    /// <summary>Checks the method and its settings; AdaLoRA's total_step becomes <paramref name="totalSteps"/> when unset.</summary>
    internal void ValidateMethod(int totalSteps)
    {
        if (!Enum.IsDefined(Method)) throw new ArgumentOutOfRangeException(nameof(Method), Method, "not a FineTuningMethod value");
        PeftMethods.Validate(Method, this);
        if (Method == FineTuningMethod.AdaLora)
        {
            AdaLora.TotalStep ??= totalSteps;
            AdaLora.Validate();
        }
    }
}
