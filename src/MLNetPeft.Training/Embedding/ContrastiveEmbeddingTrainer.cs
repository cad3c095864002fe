using MLNetPeft.Architectures;
using MLNetPeft.Retrieval.Embeddings;
using MLNetPeft.Runtime;
using MLNetPeft.Tuners;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Embedding;

/// <summary>
/// A training pair of an embedding model: a query (anchor) and a passage that answers it (positive), as token ids, and
/// optionally a passage that looks relevant but does not answer (a hard negative, e.g. mined with BM25).
/// </summary>
public sealed record EmbeddingPair(IReadOnlyList<int> Anchor, IReadOnlyList<int> Positive, IReadOnlyList<int>? Negative = null);

/// <summary>
/// Contrastive tuning of a sentence embedder with in-batch negatives, as sentence-transformers'
/// <c>MultipleNegativesRankingLoss</c> defines it: for a batch of (anchor, positive) pairs, the loss is the cross-entropy
/// of scale · cos(anchor_i, positive_j) over j with the target j = i, every other positive of the batch serving as a
/// negative. A batch never holds the same positive twice (its <c>NoDuplicatesDataLoader</c>), so a negative is never
/// another copy of the answer. With hard negatives (triplets), every anchor is scored against all the batch's positives and
/// all its negatives, the target still its own positive. On the library's <see cref="Trainer"/>: the encoder's parameters
/// that require grad train (LoRA's, or all).
/// </summary>
public sealed class ContrastiveEmbeddingTrainer
{
    private readonly SentenceEmbedder _embedder;
    private readonly TrainingOptions _options;
    private readonly double _scale;
    private readonly ITrainingStepHook? _hook;

    /// <param name="scale">The similarity scale (sentence-transformers' default 20, a temperature of 0.05).</param>
    public ContrastiveEmbeddingTrainer(SentenceEmbedder embedder, TrainingOptions options, double scale = 20, ITrainingStepHook? hook = null)
    {
        _embedder = embedder ?? throw new ArgumentNullException(nameof(embedder));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        if (!(scale > 0) || !double.IsFinite(scale)) throw new ArgumentOutOfRangeException(nameof(scale), scale, "must be a positive number");
        if (options.BatchSize < 2) throw new ArgumentOutOfRangeException(nameof(options), options.BatchSize, "BatchSize must be at least 2: the other pairs of a batch are the negatives.");
        _scale = scale;
        _hook = hook;
        options.Validate();
    }

    /// <summary>Trains on <paramref name="train"/>; the validation loss (when given) is the same loss on <paramref name="validation"/> in eval mode.</summary>
    public TrainingResult Train(IReadOnlyList<EmbeddingPair> train, IReadOnlyList<EmbeddingPair>? validation = null, IProgress<TrainingProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(train);
        if (train.Select(p => Key(p.Positive)).Distinct().Count() < 2)
            throw new ArgumentException("The pairs need at least two different positives: a batch's other positives are its negatives.", nameof(train));
        if (train.Any(p => p.Anchor.Count == 0 || p.Positive.Count == 0 || p.Negative is { Count: 0 })) throw new ArgumentException("A pair has an empty anchor, positive or negative.", nameof(train));
        if (train.Any(p => p.Negative is not null && Key(p.Negative) == Key(p.Positive))) throw new ArgumentException("A pair's negative equals its positive.", nameof(train));
        // A batch's candidates are one column per text kind, so either every pair has a negative or none has.
        foreach (var (set, name) in new[] { (train, nameof(train)), (validation ?? [], nameof(validation)) })
            if (set.Any(p => p.Negative is null) && set.Any(p => p.Negative is not null))
                throw new ArgumentException("Either every pair has a negative or none has; some pairs have one and others not.", name);
        return new Trainer(new Objective(this, train, validation), _options, _hook).Train(progress, cancellationToken);
    }

    /// <summary>
    /// Mean cross-entropy of scale · cos(anchor_i, c_j) with target j = i ([batch, d] each), the candidates c the positives
    /// followed by the negatives when given.
    /// </summary>
    public static Tensor Loss(Tensor anchors, Tensor positives, double scale, Tensor? negatives = null)
    {
        using var scope = NewDisposeScope();
        var a = nn.functional.normalize(anchors.to(ScalarType.Float32), p: 2, dim: 1);
        var candidates = negatives is null ? positives : cat([positives, negatives], 0);
        var p = nn.functional.normalize(candidates.to(ScalarType.Float32), p: 2, dim: 1);
        var logits = a.mm(p.t()).Times(scale);
        var targets = Scalars.Range(0, anchors.shape[0], anchors.device);
        return nn.functional.cross_entropy(logits, targets).MoveToOuterDisposeScope();
    }

    private static string Key(IReadOnlyList<int> tokens) => string.Join(',', tokens);

    private sealed class Objective(ContrastiveEmbeddingTrainer trainer, IReadOnlyList<EmbeddingPair> train, IReadOnlyList<EmbeddingPair>? validation) : TrainingObjective
    {
        public override string MethodName => "contrastive_embedding";
        private readonly string[] _positiveKeys = [.. train.Select(p => Key(p.Positive))];
        private readonly string?[] _negativeKeys = [.. train.Select(p => p.Negative is null ? null : Key(p.Negative))];

        public override PretrainedModule Model => trainer._embedder.Encoder;

        public override int ExampleCount => train.Count;

        public override string DataFingerprint()
        {
            using var hash = new DataFingerprint();
            foreach (var pair in train)
            {
                hash.Add(pair.Anchor).Add(pair.Positive);
                if (pair.Negative is not null) hash.Add(pair.Negative);
            }
            return hash.Finish();
        }

        public override BatchLoss? Loss(int step, int micro, Random sampler)
        {
            // Pairs drawn at random, skipping a pair whose positive or negative the batch already holds as a candidate,
            // so that no candidate is a copy of another anchor's answer.
            var batch = new List<EmbeddingPair>(trainer._options.BatchSize);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            for (int tries = 0; batch.Count < trainer._options.BatchSize && tries < 20 * trainer._options.BatchSize; tries++)
            {
                int i = sampler.Next(train.Count);
                if (seen.Contains(_positiveKeys[i]) || (_negativeKeys[i] is { } n && seen.Contains(n))) continue;
                seen.Add(_positiveKeys[i]);
                if (_negativeKeys[i] is { } negative) seen.Add(negative);
                batch.Add(train[i]);
            }
            if (batch.Count < 2) return null;
            return new BatchLoss(BatchLossOf(batch), batch.Sum(p => (long)p.Anchor.Count + p.Positive.Count + (p.Negative?.Count ?? 0)));
        }

        private Tensor BatchLossOf(IReadOnlyList<EmbeddingPair> batch)
        {
            using var scope = NewDisposeScope();
            var anchors = trainer._embedder.Forward(batch.Select(p => p.Anchor).ToList());
            var positives = trainer._embedder.Forward(batch.Select(p => p.Positive).ToList());
            var negatives = batch[0].Negative is null ? null : trainer._embedder.Forward(batch.Select(p => p.Negative!).ToList());
            return ContrastiveEmbeddingTrainer.Loss(anchors, positives, trainer._scale, negatives).MoveToOuterDisposeScope();
        }

        public override double? ValidationLoss()
        {
            if (validation is null || validation.Count < 2) return null;
            var encoder = trainer._embedder.Encoder;
            bool wasTraining = encoder.training;
            encoder.eval();
            try
            {
                using var _ = no_grad();
                double sum = 0;
                int batches = 0;
                foreach (var chunk in validation.Chunk(trainer._options.BatchSize).Where(c => c.Length >= 2))
                {
                    using var scope = NewDisposeScope();
                    sum += BatchLossOf(chunk).item<float>();
                    batches++;
                }
                return batches == 0 ? null : sum / batches;
            }
            finally
            {
                if (wasTraining) encoder.train();
            }
        }
    }
}
