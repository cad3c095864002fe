using Microsoft.ML;

namespace MLNetPeft.ML.Persistence;

/// <summary>
/// Checks shared by the transformers that save a model's checkpoint (<see cref="StoredFolder"/> holds and streams the
/// files), and a scratch folder for building one. Only safetensors and JSON/text files are ever stored or read; nothing
/// is deserialized as code.
/// </summary>
internal static class ModelFiles
{
    /// <summary>A transformer saves its model's tokenizer files, which are known only for models loaded from a checkpoint folder.</summary>
    public static void RequireCheckpointFolder(MLNetPeft.Architectures.PretrainedModule model)
    {
        if (model.SourceFolder is null)
            throw new InvalidOperationException("The model was not loaded from a checkpoint folder, so its tokenizer files are unknown; " +
                "save it with SavePretrained next to its tokenizer files and load it with PretrainedModels.LoadCausalLM.");
    }

    /// <summary>
    /// A saved model reads its tokenizer from the checkpoint's files, so the tokenizer given must agree with them on
    /// <paramref name="samples"/>; otherwise a reloaded model would see other token ids than it was trained or run on.
    /// </summary>
    public static void CheckTokenizerMatchesCheckpoint(MLNetPeft.Architectures.PretrainedModule model, MLNetPeft.Tokenization.TextTokenizer tokenizer, IEnumerable<string> samples)
    {
        var saved = MLNetPeft.Tokenization.TextTokenizer.FromPretrained(model.SourceFolder!);
        foreach (var text in samples.Take(16))
            if (!saved.Encode(text).SequenceEqual(tokenizer.Encode(text)))
                throw new ArgumentException($"The tokenizer given encodes '{text}' differently from the tokenizer files in '{model.SourceFolder}', " +
                    "which a saved model uses; pass TextTokenizer.FromPretrained of the model's folder.", nameof(tokenizer));
    }

    /// <summary>Runs <paramref name="use"/> on a new, empty temporary folder and deletes the folder afterwards.</summary>
    public static T WithTempFolder<T>(Func<string, T> use)
    {
        var folder = Path.Combine(Path.GetTempPath(), "mlnetpeft-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        try
        {
            return use(folder);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
