using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace MLNetPeft.Tuners.PromptTuning;

/// <summary>How prompt tuning's virtual token embeddings start (PEFT's PromptTuningInit).</summary>
public enum PromptTuningInit
{
    /// <summary>Random values (PEFT: nn.Embedding's default N(0, 1)).</summary>
    Random,
    /// <summary>The embeddings of <see cref="PromptTuningConfig.PromptTuningInitText"/>'s tokens, repeated or cut to the length.</summary>
    Text,
    /// <summary>The embeddings of tokens drawn uniformly from the vocabulary.</summary>
    SampleVocab,
}

/// <summary>Prompt tuning (Lester et al. 2021): trainable embeddings of virtual tokens put before the input. PEFT's fields.</summary>
public sealed class PromptTuningConfig : PromptLearningConfig
{
    [JsonPropertyName("peft_type")] public override string PeftType => "PROMPT_TUNING";
    [JsonPropertyName("prompt_tuning_init")] public PromptTuningInit PromptTuningInit { get; set; } = PromptTuningInit.Random;
    /// <summary>The text whose token embeddings start the prompt, with <see cref="PromptTuningInit.Text"/>.</summary>
    [JsonPropertyName("prompt_tuning_init_text")] public string? PromptTuningInitText { get; set; }

    public override void Validate()
    {
        base.Validate();
        if (!Enum.IsDefined(PromptTuningInit)) throw new ArgumentOutOfRangeException(nameof(PromptTuningInit), PromptTuningInit, "not a PromptTuningInit value");
        if (PromptTuningInit == PromptTuningInit.Text && string.IsNullOrWhiteSpace(PromptTuningInitText))
            throw new ArgumentException("prompt_tuning_init TEXT needs prompt_tuning_init_text.", nameof(PromptTuningInitText));
    }

    internal override JsonObject ToJson()
    {
        var json = base.ToJson();
        json["prompt_tuning_init"] = PromptTuningInit switch { PromptTuningInit.Text => "TEXT", PromptTuningInit.SampleVocab => "SAMPLE_VOCAB", _ => "RANDOM" };
        json["prompt_tuning_init_text"] = PromptTuningInitText;
        return json;
    }
}
