using MLNetPeft.Architectures;
using MLNetPeft.BaseModel.World;
using MLNetPeft.Tokenization;

namespace MLNetPeft.BaseModel;

/// <summary>
/// Everything that defines the bundled base model: the world and corpus seeds and sizes, the vocabulary size, the
/// architecture and the pretraining schedule. <c>eng/Pretrain</c> runs this recipe; the same recipe gives the same model.
/// </summary>
public static class BaseModelRecipe
{
    public const int WorldSeed = 2026;
    public const int TrainingDocumentsSeed = 1;
    public const int ValidationDocumentsSeed = 2;
    public const int TrainingDocuments = 60_000;
    public const int ValidationDocuments = 1_500;
    /// <summary>Documents the BPE vocabulary is learned from (the first ones of the training corpus).</summary>
    public const int VocabularyDocuments = 20_000;
    public const int VocabSize = 2048;
    public const int BlockSize = 256;

    public static SyntheticWorld World() => new(WorldSeed);

    /// <summary>A small Llama: 6 layers, width 256, grouped-query attention (8 heads, 4 key/value heads), tied embeddings.</summary>
    public static LlamaConfig ModelConfig(int vocabSize) => new()
    {
        VocabSize = vocabSize, HiddenSize = 256, IntermediateSize = 640, NumHiddenLayers = 6, NumAttentionHeads = 8, NumKeyValueHeads = 4,
        MaxPositionEmbeddings = 1024, RopeTheta = 10000, RmsNormEps = 1e-5, TieWordEmbeddingsField = true,
        BosTokenId = vocabSize - 1, EosTokenIdNode = vocabSize - 1, PadTokenId = vocabSize - 1, Architectures = ["LlamaForCausalLM"],
    };

    public static Training.TrainingOptions TrainingOptions(int steps) => new()
    {
        MaxSteps = steps, BatchSize = 16, LearningRate = 3e-3, MinLearningRate = 3e-4, WarmupSteps = Math.Min(100, steps / 10),
        WeightDecay = 0.1, Beta1 = 0.9, Beta2 = 0.95, MaxGradNorm = 1.0, EvalInterval = Math.Max(1, steps / 10), EvalBatches = 16,
        CheckpointInterval = Math.Max(1, steps / 10), Seed = 1,
    };
}

/// <summary>The pretrained base model that ships with the library (HF folder layout, copied to the output as <c>mlnetpeft-base/</c>).</summary>
public static class BundledBaseModel
{
    public const string FolderName = "mlnetpeft-base";

    /// <summary>The folder holding config.json, model.safetensors and the tokenizer files.</summary>
    public static string Folder => Path.Combine(AppContext.BaseDirectory, FolderName);

    public static CausalLanguageModel Load(ModelLoadOptions? options = null) => PretrainedModels.LoadCausalLM(RequireFolder(), options);

    public static TextTokenizer LoadTokenizer() => TextTokenizer.FromPretrained(RequireFolder());

    private static string RequireFolder() =>
        File.Exists(Path.Combine(Folder, "model.safetensors")) ? Folder
            : throw new FileNotFoundException($"The bundled base model is missing from '{Folder}'. Reference the MLNetPeft.BaseModel project or package (it copies the folder to the output), or rebuild it with 'dotnet run -c Release --project eng/Pretrain'.");
}
