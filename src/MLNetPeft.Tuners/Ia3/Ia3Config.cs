using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace MLNetPeft.Tuners.Ia3;

/// <summary>
/// IA3 (Liu et al. 2022, "(IA)³"): learned vectors that rescale the outputs of the key and value projections and the
/// input of the feed-forward output projection (the FFN activation). HF PEFT's field names and defaults.
/// </summary>
public sealed class Ia3Config : PeftConfig
{
    [JsonPropertyName("peft_type")] public override string PeftType => "IA3";
    /// <summary>Layers to rescale (names, or <see cref="TargetModulesRegex"/>); null picks keys, values and the FFN output projection of the family.</summary>
    [JsonPropertyName("target_modules")] public IReadOnlyList<string>? TargetModules { get; set; }
    [JsonIgnore] public string? TargetModulesRegex { get; set; }
    /// <summary>Which targets are feed-forward layers, whose input (not output) is rescaled; null picks the family's FFN output projection.</summary>
    [JsonPropertyName("feedforward_modules")] public IReadOnlyList<string>? FeedforwardModules { get; set; }
    /// <summary>Start the vectors at one (the default, so a fresh adapter changes nothing) or at N(0, 1) values.</summary>
    [JsonPropertyName("init_ia3_weights")] public bool InitIa3Weights { get; set; } = true;

    public override void Validate()
    {
        if (TargetModules is not null && TargetModulesRegex is not null)
            throw new ArgumentException("Give target modules either as names or as a regular expression, not both.", nameof(TargetModules));
        if (FeedforwardModules is not null && TargetModules is not null && FeedforwardModules.Any(f => !TargetModules.Contains(f)))
            throw new ArgumentException($"feedforward_modules must be a subset of target_modules; {string.Join(", ", FeedforwardModules.Where(f => !TargetModules.Contains(f)))} is not a target.", nameof(FeedforwardModules));
    }

    internal override JsonObject ToJson() => new() { ["init_ia3_weights"] = InitIa3Weights };
}
