using System.Security.Cryptography;
using System.Text;
using MLNetPeft.Architectures;

namespace MLNetPeft.Training;

/// <summary>
/// What a checkpoint folder records of the run that wrote it: the model's config, the names of the parameters that
/// train (which says the method and where it sits), and the training data. A run resumes only from its own checkpoints;
/// another run's would load weights that silently belong elsewhere.
/// </summary>
public sealed record RunFingerprint(string ModelConfigSha256, int TrainableCount, string TrainableSha256, int DataExamples, string DataSha256)
{
    /// <param name="examples">How many examples the training data holds.</param>
    /// <param name="dataSha256">The SHA-256 of the training data (the objective's).</param>
    public static RunFingerprint Of(PretrainedModule model, IEnumerable<string> trainable, int examples, string dataSha256)
    {
        var names = trainable.Order(StringComparer.Ordinal).ToList();
        return new RunFingerprint(Sha256(ArchitectureJson(model)), names.Count, Sha256(string.Join("\n", names)), examples, dataSha256);
    }

    /// <summary>The config without the fields saving rewrites (the stored dtype, the writer's version).</summary>
    private static string ArchitectureJson(PretrainedModule model)
    {
        var json = System.Text.Json.Nodes.JsonNode.Parse(model.Config.ToJson())!.AsObject();
        json.Remove("torch_dtype");
        json.Remove("transformers_version");
        return json.ToJsonString();
    }

    /// <summary>What differs between this run and <paramref name="saved"/>, in words (empty when it is the same run).</summary>
    public IReadOnlyList<string> Differences(RunFingerprint? saved)
    {
        if (saved is null) return ["it records no fingerprint of its run (it was written by an older version), so it cannot be shown to be this run's"];
        var differences = new List<string>();
        if (saved.ModelConfigSha256 != ModelConfigSha256) differences.Add("the model's config differs");
        if (saved.TrainableCount != TrainableCount || saved.TrainableSha256 != TrainableSha256)
            differences.Add($"other parameters train ({saved.TrainableCount} then, {TrainableCount} now: another method or other target modules)");
        if (saved.DataExamples != DataExamples || saved.DataSha256 != DataSha256)
            differences.Add($"the training data differs ({saved.DataExamples} examples then, {DataExamples} now)");
        return differences;
    }

    private static string Sha256(string text) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)));
}
