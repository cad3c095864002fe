using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace MLNetPeft.Tuners.PTuning;

/// <summary>The prompt encoder of P-Tuning (PEFT's PromptEncoderReparameterizationType).</summary>
public enum PromptEncoderType
{
    /// <summary>A three-layer MLP with ReLU (PEFT's default).</summary>
    Mlp,
    /// <summary>A bidirectional LSTM followed by a two-layer MLP (the paper's encoder).</summary>
    Lstm,
}

/// <summary>P-Tuning (Liu et al. 2021, "GPT Understands, Too"): virtual token embeddings produced by a trainable prompt encoder. PEFT's fields.</summary>
public sealed class PTuningConfig : PromptLearningConfig
{
    [JsonPropertyName("peft_type")] public override string PeftType => "P_TUNING";
    [JsonPropertyName("encoder_reparameterization_type")] public PromptEncoderType EncoderReparameterizationType { get; set; } = PromptEncoderType.Mlp;
    /// <summary>Hidden width of the encoder; null uses the model's hidden size (PEFT's rule).</summary>
    [JsonPropertyName("encoder_hidden_size")] public int? EncoderHiddenSize { get; set; }
    /// <summary>LSTM layers (the MLP always has three linear layers, as in PEFT).</summary>
    [JsonPropertyName("encoder_num_layers")] public int EncoderNumLayers { get; set; } = 2;
    [JsonPropertyName("encoder_dropout")] public double EncoderDropout { get; set; }

    public override void Validate()
    {
        base.Validate();
        if (EncoderHiddenSize is <= 0) throw new ArgumentOutOfRangeException(nameof(EncoderHiddenSize), EncoderHiddenSize, "must be positive");
        if (EncoderNumLayers <= 0) throw new ArgumentOutOfRangeException(nameof(EncoderNumLayers), EncoderNumLayers, "must be positive");
        if (EncoderDropout is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(EncoderDropout), EncoderDropout, "must be in [0, 1)");
    }

    internal override JsonObject ToJson()
    {
        var json = base.ToJson();
        json["encoder_reparameterization_type"] = EncoderReparameterizationType == PromptEncoderType.Lstm ? "LSTM" : "MLP";
        json["encoder_hidden_size"] = EncoderHiddenSize;
        json["encoder_num_layers"] = EncoderNumLayers;
        json["encoder_dropout"] = EncoderDropout;
        return json;
    }
}
