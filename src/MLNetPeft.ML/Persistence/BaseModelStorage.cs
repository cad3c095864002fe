namespace MLNetPeft.ML;

/// <summary>How a saved transformer keeps its base model in the ML.NET model zip.</summary>
public enum BaseModelStorage
{
    /// <summary>
    /// Embed models under 100 MB (<see cref="Persistence.ModelPackage.EmbedLimitBytes"/>); reference larger ones
    /// by folder and SHA-256 when the base weights stay as they were loaded (generation only, or an unmerged adapter),
    /// and embed them otherwise.
    /// </summary>
    Auto,
    /// <summary>The checkpoint files (config, safetensors weights, tokenizer files) are stored inside the zip.</summary>
    Embed,
    /// <summary>
    /// The zip stores the checkpoint folder's path and each file's SHA-256; loading reads the folder and fails clearly
    /// when it is missing or its files differ. Only for unchanged base weights: generation, or LoRA with
    /// MergeAdapter = false. The base is what is on disk in the folder the model was loaded from.
    /// </summary>
    Reference,
}
