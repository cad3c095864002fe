namespace MLNetPeft.Hosting.Models;

/// <summary>
/// The models a host serves, by name, as bound from configuration (section <see cref="SectionName"/>):
/// <code>
/// "MLNetPeft": { "Models": { "chat": { "Path": "models/chat.zip" }, "embeddings": { "Path": "models/embed.zip" } } }
/// </code>
/// </summary>
public sealed class MLNetPeftHostingOptions
{
    /// <summary>The configuration section read by default.</summary>
    public const string SectionName = "MLNetPeft";

    /// <summary>Saved models (zips written by <c>mlContext.Model.Save</c>) by name; names compare without case.</summary>
    public Dictionary<string, ModelRegistrationOptions> Models { get; set; } = new(StringComparer.OrdinalIgnoreCase);
}

/// <summary>One served model.</summary>
public sealed class ModelRegistrationOptions
{
    /// <summary>The model zip; a relative path is read from the host's content root.</summary>
    public string? Path { get; set; }

    /// <summary>Load the file again when it changes (replace it atomically: write a temporary file, then rename it).</summary>
    public bool WatchForChanges { get; set; } = true;

    /// <summary>Idle prediction engines kept per model (a <c>PredictionEngine</c> serves one thread at a time).</summary>
    public int MaxPooledEngines { get; set; } = Environment.ProcessorCount * 2;
}
