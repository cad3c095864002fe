using MLNetPeft.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Training.LanguageModeling;

/// <summary>
/// Next-token training of a <see cref="CausalLanguageModel"/> (pretraining, continued pretraining, fine-tuning) on
/// the library's <see cref="Trainer"/>: AdamW, warm-up then cosine decay, gradient clipping and accumulation, optional
/// bf16, periodic evaluation and checkpoints that a later run resumes from exactly. Each micro-batch is
/// <see cref="TrainingOptions.BatchSize"/> blocks drawn at random from (seed, step).
/// </summary>
public sealed class LanguageModelTrainer
{
    private readonly CausalLanguageModel _model;
    private readonly TrainingOptions _options;
    private readonly ITrainingStepHook? _hook;

    /// <param name="model">The model to train (its parameters that require grad).</param>
    /// <param name="options">The training loop's settings.</param>
    /// <param name="hook">A tuning method that takes part in each step (AdaLoRA); its own training state is part of checkpoints.</param>
    public LanguageModelTrainer(CausalLanguageModel model, TrainingOptions options, ITrainingStepHook? hook = null)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _hook = hook;
        options.Validate();
    }

    /// <summary>Trains on <paramref name="train"/>, evaluating on <paramref name="validation"/> when given.</summary>
    /// <exception cref="TrainingDivergedException">The loss or gradient norm became NaN or infinite.</exception>
    /// <exception cref="OperationCanceledException">Cancelled; a checkpoint of the last completed step was written first.</exception>
    public TrainingResult Train(TokenBlocks train, TokenBlocks? validation = null, IProgress<TrainingProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(train);
        if (train.Count < _options.BatchSize)
            throw new ArgumentException($"The training data has {train.Count} blocks, fewer than BatchSize = {_options.BatchSize}.", nameof(train));
        return new Trainer(new NextTokenObjective(_model, train, validation, _options), _options, _hook).Train(progress, cancellationToken);
    }

    /// <summary>Token-level cross-entropy, computed in float32; targets equal to <see cref="TokenBlocks.IgnoreIndex"/> are skipped.</summary>
    public static Tensor CrossEntropy(Tensor logits, Tensor targets) =>
        nn.functional.cross_entropy(logits.view(-1, logits.shape[^1]).to(ScalarType.Float32), targets.view(-1), ignore_index: TokenBlocks.IgnoreIndex);

    /// <summary>Mean next-token loss per target token over the blocks (in order; the first <paramref name="maxBatches"/> batches when given).</summary>
    public static double Evaluate(CausalLanguageModel model, TokenBlocks blocks, int batchSize, int? maxBatches = null)
    {
        bool wasTraining = model.training;
        model.eval();
        using var _ = no_grad();
        using var evaluationScope = NewDisposeScope();
        double sum = 0;
        long count = 0;
        var device = model.parameters().First().device;
        int batches = 0;
        for (int start = 0; start < blocks.Count && (maxBatches is null || batches < maxBatches); start += batchSize, batches++)
        {
            using var scope = NewDisposeScope();
            var (inputs, targets) = blocks.Batch(Enumerable.Range(start, Math.Min(batchSize, blocks.Count - start)).ToArray(), trimPadding: true);
            long counted = targets.ne(Scalars.Of((long)TokenBlocks.IgnoreIndex)).sum().item<long>();
            if (counted == 0) continue;
            var loss = CrossEntropy(model.Forward(inputs.to(device)), targets.to(device));
            sum += loss.item<float>() * counted;
            count += counted;
        }
        if (wasTraining) model.train();
        return sum / count;
    }

    /// <summary>The complete checkpoints under <paramref name="folder"/>, oldest first.</summary>
    public static IReadOnlyList<string> Checkpoints(string folder) => Trainer.Checkpoints(folder);

    /// <summary>The newest complete checkpoint under <paramref name="folder"/>, or null.</summary>
    public static string? LatestCheckpoint(string folder) => Trainer.LatestCheckpoint(folder);

    /// <summary>Cross-entropy of the next token over random blocks; validation is the mean loss per target token.</summary>
    private sealed class NextTokenObjective(CausalLanguageModel model, TokenBlocks train, TokenBlocks? validation, TrainingOptions options) : TrainingObjective
    {
        public override string MethodName => "language_modeling";
        public override PretrainedModule Model => model;

        public override int ExampleCount => train.Count;

        public override string DataFingerprint() => train.Fingerprint();

        public override BatchLoss? Loss(int step, int micro, Random sampler)
        {
            var indices = Enumerable.Range(0, options.BatchSize).Select(_ => sampler.Next(train.Count)).ToArray();
            var (inputs, targets) = train.Batch(indices, trimPadding: true);
            // A micro-batch of prompts only (completion-only loss) has nothing to learn; its mean loss would be NaN.
            if (!targets.ne(Scalars.Of((long)TokenBlocks.IgnoreIndex)).any().item<bool>()) return null;
            var device = model.parameters().First().device;
            return new BatchLoss(CrossEntropy(model.Forward(inputs.to(device)), targets.to(device)), inputs.numel());
        }

        public override double? ValidationLoss() => validation is null ? null : Evaluate(model, validation, options.BatchSize, options.EvalBatches);
    }
}
