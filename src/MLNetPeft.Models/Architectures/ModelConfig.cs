using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace MLNetPeft.Architectures;

/// <summary>
/// Fields every HF transformers <c>config.json</c> shares. Subclasses declare their family's fields
/// with HF's names; fields this library does not use are kept in <see cref="Extra"/> and written back
/// on save, so a checkpoint folder round-trips without losing anything.
/// </summary>
public abstract class ModelConfig
{
    internal static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    [JsonPropertyName("model_type")] public string ModelType { get; set; } = "";
    [JsonPropertyName("architectures")] public List<string>? Architectures { get; set; }
    [JsonPropertyName("vocab_size")] public int VocabSize { get; set; }
    [JsonPropertyName("torch_dtype")] public string? TorchDtype { get; set; }
    [JsonPropertyName("initializer_range")] public double InitializerRange { get; set; } = 0.02;
    [JsonPropertyName("bos_token_id")] public int? BosTokenId { get; set; }
    [JsonPropertyName("pad_token_id")] public int? PadTokenId { get; set; }
    /// <summary>One id or several (Llama 3.1 lists three); written back in the form it was read.</summary>
    [JsonPropertyName("eos_token_id")] public JsonNode? EosTokenIdNode { get; set; }
    [JsonPropertyName("tie_word_embeddings")] public bool? TieWordEmbeddingsField { get; set; }

    [JsonExtensionData] public Dictionary<string, JsonElement>? Extra { get; set; }

    [JsonIgnore]
    public IReadOnlyList<int> EosTokenIds => EosTokenIdNode switch
    {
        null => [],
        JsonArray a => a.Select(x => x!.GetValue<int>()).ToList(),
        var v => [v.GetValue<int>()],
    };

    /// <summary>Whether the output projection shares the input embedding (the default differs per family).</summary>
    [JsonIgnore] public bool TieWordEmbeddings => TieWordEmbeddingsField ?? DefaultTieWordEmbeddings;
    protected virtual bool DefaultTieWordEmbeddings => true;

    /// <summary>Checks the fields that the model's shapes depend on; throws naming the field.</summary>
    public virtual void Validate()
    {
        Require(VocabSize is > 0 and <= MaxVocabulary, "vocab_size", $"must be in [1, {MaxVocabulary}]");
        // eos ids of another type would only fail when first used.
        try { _ = EosTokenIds; }
        catch (Exception e) when (e is InvalidOperationException or FormatException) { Require(false, "eos_token_id", "must be an id or a list of ids"); }
    }

    /// <summary>Sane limits on sizes read from a config, so that a bad file cannot make us allocate without bound.</summary>
    protected const int MaxVocabulary = 1 << 22, MaxWidth = 1 << 16, MaxLayers = 1 << 10, MaxHeads = 1 << 10, MaxPositions = 1 << 22;

    protected void Require(bool condition, string field, string what)
    {
        if (!condition) throw new InvalidDataException($"{GetType().Name}: '{field}' {what}.");
    }

    /// <summary>
    /// A lower bound on the parameters this config implies (its large matrices), which the checkpoint must hold: checked
    /// before the model is built, so that a config claiming sizes its weights do not have allocates nothing.
    /// </summary>
    public abstract long MinimumParameters();

    public string ToJson() => JsonSerializer.Serialize(this, GetType(), JsonOptions);

    internal static T FromJson<T>(string json, string source) where T : ModelConfig
    {
        T? config;
        try { config = JsonSerializer.Deserialize<T>(json, JsonOptions); }
        catch (JsonException e) { throw new InvalidDataException($"Config '{source}' is not a valid {typeof(T).Name}: {e.Message}", e); }
        if (config is null) throw new InvalidDataException($"Config '{source}' is empty.");
        try { config.Validate(); }
        catch (InvalidDataException e) { throw new InvalidDataException($"Config '{source}': {e.Message}", e); }
        catch (NotSupportedException e) { throw new NotSupportedException($"Config '{source}': {e.Message}", e); }
        return config;
    }

    /// <summary>Reads <c>model_type</c> from a config.json without binding it to a family.</summary>
    public static string ReadModelType(string configPath)
    {
        JsonNode? node;
        try { node = JsonNode.Parse(File.ReadAllText(configPath)); }
        catch (JsonException e) { throw new InvalidDataException($"Config '{configPath}' is not well-formed JSON: {e.Message}", e); }
        try
        {
            return node?["model_type"]?.GetValue<string>()
                ?? throw new InvalidDataException($"Config '{configPath}' has no 'model_type'.");
        }
        catch (InvalidOperationException e) { throw new InvalidDataException($"Config '{configPath}': 'model_type' is not a string.", e); }
    }
}
