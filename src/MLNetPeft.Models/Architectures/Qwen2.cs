using System.Text.Json.Serialization;

namespace MLNetPeft.Architectures;

/// <summary>
/// HF <c>Qwen2Config</c>: the Llama layout with bias on q/k/v (never on o_proj), rope_theta 1e6 by default,
/// and a sliding window that applies only when <c>use_sliding_window</c> is set.
/// </summary>
public sealed class Qwen2Config : LlamaConfig
{
    public Qwen2Config()
    {
        ModelType = "qwen2";
        VocabSize = 151936;
        HiddenSize = 4096;
        IntermediateSize = 22016;
        MaxPositionEmbeddings = 32768;
        RopeTheta = 10000.0;
    }

    [JsonPropertyName("use_sliding_window")] public bool UseSlidingWindow { get; set; }

    /// <summary>Layers at or above this index use the window when <see cref="UseSlidingWindow"/> is set (HF's default 28).</summary>
    [JsonPropertyName("max_window_layers")] public int? MaxWindowLayersField { get; set; }

    [JsonIgnore] public override bool QkvBias => true;
    [JsonIgnore] public override bool OutputBias => false;

    [JsonIgnore] private int MaxWindowLayers => MaxWindowLayersField ?? 28;
    [JsonIgnore] private bool AnyLayerWindowed => UseSlidingWindow && MaxWindowLayers < NumHiddenLayers;

    // With the window on every layer (max_window_layers <= 0) it applies to all; with it on none, to none.
    [JsonIgnore] public override int? EffectiveSlidingWindow => AnyLayerWindowed ? SlidingWindow : null;

    public override void Validate()
    {
        base.Validate();
        Require(!AnyLayerWindowed || MaxWindowLayers <= 0, "max_window_layers",
            $"({MaxWindowLayers}) puts a sliding window on only some of the {NumHiddenLayers} layers, which is not supported");
    }
}

/// <summary>Qwen2 as HF's <c>Qwen2ForCausalLM</c>; the computation is Llama's with Qwen2's biases.</summary>
public sealed class Qwen2ForCausalLM : LlamaForCausalLM
{
    public Qwen2ForCausalLM(Qwen2Config config) : base(config) { }
}
