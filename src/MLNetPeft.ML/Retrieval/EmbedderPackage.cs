using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.ML.Persistence;
using MLNetPeft.MiniLM;
using MLNetPeft.Retrieval.Embeddings;
using MLNetPeft.Tokenization;

namespace MLNetPeft.ML.Retrieval;

/// <summary>An embedder's settings as a transformer saves them.</summary>
internal sealed record EmbedderSettings(int MaxLength, int BatchSize, EmbeddingPooling Pooling, bool Normalize)
{
    public static EmbedderSettings Of(SentenceEmbedderOptions o) => new(o.MaxLength, o.BatchSize, o.Pooling, o.Normalize);

    public SentenceEmbedderOptions ToOptions() => new() { MaxLength = MaxLength, BatchSize = BatchSize, Pooling = Pooling, Normalize = Normalize };

    /// <summary>Whether settings read from a zip are in range (before anything is built from them).</summary>
    public bool IsValid => MaxLength is >= 2 and <= 1 << 16 && BatchSize is >= 1 and <= 1 << 16 && Enum.IsDefined(Pooling);
}

/// <summary>The embedder of a transformer and what its zip keeps of the encoder: the bundled all-MiniLM-L6-v2 by reference, another encoder embedded or referenced.</summary>
internal static class EmbedderPackage
{
    /// <summary>The embedder for an estimator's encoder (the bundled one, loaded and owned, when none is given) and its package.</summary>
    public static (SentenceEmbedder Embedder, ModelPackage Package, bool OwnsEncoder) Create(BertModel? encoder, TextTokenizer? tokenizer, SentenceEmbedderOptions options,
        BaseModelStorage storage, IChannel ch)
    {
        if (encoder is null)
        {
            var bundled = AllMiniLmL6V2.Load();
            try
            {
                return (new SentenceEmbedder(bundled, AllMiniLmL6V2.LoadTokenizer(), options), ModelPackage.Reference(BaseModelReference.OfBundledMiniLm()), true);
            }
            catch
            {
                bundled.Dispose();
                throw;
            }
        }
        var embedder = new SentenceEmbedder(encoder, tokenizer!, options);
        ModelFiles.RequireCheckpointFolder(encoder);
        var package = ModelPackage.Resolve(storage, ModelPackage.WeightBytes(encoder), baseUnchanged: true, ch) == BaseModelStorage.Reference
            ? ModelPackage.Reference(BaseModelReference.Of(encoder.SourceFolder!))
            : ModelFiles.WithTempFolder(folder =>
            {
                encoder.SavePretrained(folder);
                return ModelPackage.Embed(folder);
            });
        return (embedder, package, false);
    }

    /// <summary>The embedder of a loaded zip (its encoder owned by the caller from here on).</summary>
    public static SentenceEmbedder Load(ModelPackage package, EmbedderSettings settings)
    {
        var (encoder, tokenizer) = package.LoadEncoder();
        try
        {
            return new SentenceEmbedder(encoder, tokenizer, settings.ToOptions());
        }
        catch
        {
            encoder.Dispose();
            throw;
        }
    }

    /// <summary>Checks that an estimator got both an encoder and its tokenizer, or neither.</summary>
    public static void CheckPair(BertModel? encoder, TextTokenizer? tokenizer)
    {
        if ((encoder is null) != (tokenizer is null))
            throw new ArgumentException("Give both the encoder and its tokenizer, or neither (all-MiniLM-L6-v2).", encoder is null ? "encoder" : "tokenizer");
    }
}
