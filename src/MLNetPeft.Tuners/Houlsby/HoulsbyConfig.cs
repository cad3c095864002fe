using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace MLNetPeft.Tuners.Houlsby;

/// <summary>
/// Adapter tuning (Houlsby et al. 2019): a bottleneck (down-projection, nonlinearity, up-projection, residual) after
/// the attention block and after the feed-forward block of every layer, initialised near the identity. PEFT has no
/// such method; saved as this library's <see cref="PeftTypeName"/> with AdapterHub's field names.
/// </summary>
public sealed class HoulsbyConfig : PeftConfig
{
    public const string PeftTypeName = "HOULSBY_ADAPTER";

    [JsonPropertyName("peft_type")] public override string PeftType => PeftTypeName;
    /// <summary>Hidden size divided by this is the bottleneck width (AdapterHub's default 16).</summary>
    [JsonPropertyName("reduction_factor")] public int ReductionFactor { get; set; } = 16;
    /// <summary>relu, gelu or swish.</summary>
    [JsonPropertyName("non_linearity")] public string NonLinearity { get; set; } = "relu";
    /// <summary>Standard deviation of the near-identity initialisation (the paper: 1e-2; biases start at zero).</summary>
    [JsonPropertyName("init_std")] public double InitStd { get; set; } = 1e-2;
    /// <summary>Put an adapter after the attention block (the paper: yes).</summary>
    [JsonPropertyName("mh_adapter")] public bool AfterAttention { get; set; } = true;
    /// <summary>Put an adapter after the feed-forward block (the paper: yes).</summary>
    [JsonPropertyName("output_adapter")] public bool AfterFeedForward { get; set; } = true;

    public override void Validate()
    {
        if (ReductionFactor <= 0) throw new ArgumentOutOfRangeException(nameof(ReductionFactor), ReductionFactor, "reduction_factor must be positive");
        if (NonLinearity is not ("relu" or "gelu" or "swish"))
            throw new ArgumentException($"non_linearity '{NonLinearity}' is not relu, gelu or swish.", nameof(NonLinearity));
        if (!(InitStd >= 0)) throw new ArgumentOutOfRangeException(nameof(InitStd), InitStd, "must be non-negative");
        if (!AfterAttention && !AfterFeedForward) throw new ArgumentException("An adapter needs a place: after the attention block, the feed-forward block, or both.", nameof(AfterAttention));
    }

    internal override JsonObject ToJson() => new()
    {
        ["reduction_factor"] = ReductionFactor, ["non_linearity"] = NonLinearity, ["init_std"] = InitStd,
        ["mh_adapter"] = AfterAttention, ["output_adapter"] = AfterFeedForward,
    };
}
