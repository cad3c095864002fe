using Microsoft.ML;
using MLNetPeft.Architectures;
using MLNetPeft.BaseModel;
using MLNetPeft.Checkpoints;
using MLNetPeft.Tokenization;

namespace MLNetPeft.Cli;

/// <summary>Loading base models and saving and loading model zips, with errors that name the file.</summary>
internal static class Models
{
    public const string Bundled = "bundled";

    /// <summary>The bundled base model, or an HF checkpoint folder.</summary>
    public static (CausalLanguageModel Model, TextTokenizer Tokenizer) LoadBase(string source)
    {
        if (string.Equals(source, Bundled, StringComparison.OrdinalIgnoreCase)) return (BundledBaseModel.Load(), BundledBaseModel.LoadTokenizer());
        if (!File.Exists(Path.Combine(source, "config.json")))
            throw new CliException($"--base '{source}' is neither 'bundled' nor an HF checkpoint folder (no config.json in it).");
        return (PretrainedModels.LoadCausalLM(source), TextTokenizer.FromPretrained(source));
    }

    public static ITransformer Load(MLContext ml, string path, out DataViewSchema inputSchema)
    {
        if (!File.Exists(path)) throw new CliException($"The model file '{path}' does not exist.");
        return ml.Model.Load(path, out inputSchema);
    }

    /// <summary>Saves atomically (a temporary file renamed over the target): never a half-written zip.</summary>
    public static void Save(MLContext ml, ITransformer model, DataViewSchema schema, string path) =>
        AtomicFile.Write(path, stream => ml.Model.Save(model, schema, stream));
}
