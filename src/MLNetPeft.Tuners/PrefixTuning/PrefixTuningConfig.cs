using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace MLNetPeft.Tuners.PrefixTuning;

/// <summary>
/// Prefix tuning (Li and Liang 2021): trainable keys and values of virtual tokens in front of every layer's attention.
/// With <see cref="PrefixProjection"/> they come from a two-layer tanh MLP over smaller embeddings (the paper's
/// reparameterisation); without it they are trained directly, which is P-Tuning v2 (Liu et al. 2022). PEFT's fields.
/// </summary>
public sealed class PrefixTuningConfig : PromptLearningConfig
{
    [JsonPropertyName("peft_type")] public override string PeftType => "PREFIX_TUNING";
    [JsonPropertyName("prefix_projection")] public bool PrefixProjection { get; set; }
    /// <summary>Hidden width of the projection MLP; null uses token_dim (PEFT's rule).</summary>
    [JsonPropertyName("encoder_hidden_size")] public int? EncoderHiddenSize { get; set; }

    /// <summary>P-Tuning v2: prefix tuning without the reparameterisation MLP.</summary>
    public static PrefixTuningConfig PTuningV2(int numVirtualTokens = 20) => new() { NumVirtualTokens = numVirtualTokens, PrefixProjection = false };

    public override void Validate()
    {
        base.Validate();
        if (EncoderHiddenSize is <= 0) throw new ArgumentOutOfRangeException(nameof(EncoderHiddenSize), EncoderHiddenSize, "must be positive");
    }

    internal override JsonObject ToJson()
    {
        var json = base.ToJson();
        json["prefix_projection"] = PrefixProjection;
        json["encoder_hidden_size"] = EncoderHiddenSize;
        return json;
    }
}
