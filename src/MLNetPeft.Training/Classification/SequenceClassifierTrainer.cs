using MLNetPeft.Runtime;
using System.Diagnostics;
using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using MLNetPeft.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Classification;

/// <summary>One text (or text pair) to classify: token ids, token types (0 for the first segment, 1 for the second), and its class.</summary>
public sealed record ClassificationExample(IReadOnlyList<int> Ids, IReadOnlyList<int> TypeIds, int Label);

/// <summary>
/// Trains a <see cref="BertForSequenceClassification"/> with cross-entropy: AdamW over the parameters that require
/// grad (all for full fine-tuning, an adapter's otherwise), warm-up then cosine decay, gradient clipping. Each epoch
/// visits the examples in an order drawn from (seed, epoch), optionally grouped by length; batches are padded to their
/// longest example.
/// </summary>
public sealed class SequenceClassifierTrainer
{
    private readonly BertForSequenceClassification _model;
    private readonly TrainingOptions _options;
    private readonly ITrainingStepHook? _hook;

    /// <param name="options"><see cref="TrainingOptions.MaxSteps"/> is the number of optimizer steps (see <see cref="StepsFor"/>).</param>
    public SequenceClassifierTrainer(BertForSequenceClassification model, TrainingOptions options, ITrainingStepHook? hook = null)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _hook = hook;
        options.Validate();
    }

    /// <summary>
    /// Batch examples of similar length together (HF's group_by_length; see <see cref="EpochBatches"/>): far less
    /// padding when lengths vary (about 3× fewer tokens on SST-2), at the price of batches that are not uniform samples.
    /// </summary>
    public bool GroupByLength { get; init; }

    /// <summary>Optimizer steps for <paramref name="epochs"/> passes over <paramref name="examples"/> examples.</summary>
    public static int StepsFor(int examples, int batchSize, int epochs) => epochs * ((examples + batchSize - 1) / batchSize);

    public TrainingResult Train(IReadOnlyList<ClassificationExample> train, IReadOnlyList<ClassificationExample>? validation = null,
        IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(train);
        if (train.Count == 0) throw new ArgumentException("There are no training examples.", nameof(train));
        var o = _options;
        using var runScope = NewDisposeScope();   // see TensorLifetime: nothing of a run is left to the finalizer
        _model.train();
        var trainable = _model.named_parameters().Where(p => p.parameter.requires_grad).ToList();
        using var optimizer = new AdamW(trainable, o.Beta1, o.Beta2, o.Epsilon, o.WeightDecay);
        var schedule = new LearningRateSchedule(o.LearningRate, o.WarmupSteps, o.MaxSteps, o.MinLearningRate ?? o.LearningRate / 10);
        int batchesPerEpoch = (train.Count + o.BatchSize - 1) / o.BatchSize;
        var losses = new List<double>();
        var validationHistory = new List<(int, double)>();
        double? validationLoss = null;
        var clock = Stopwatch.StartNew();
        long tokens = 0;
        List<int[]> batches = [];
        for (int step = 0; step < o.MaxSteps; step++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int epoch = step / batchesPerEpoch, batchIndex = step % batchesPerEpoch;
            if (batchIndex == 0) batches = EpochBatches(train, o.BatchSize, GroupByLength, o.Seed * 1_000_003 + epoch);
            var batch = batches[batchIndex].Select(i => train[i]).ToList();
            long stepSeed = o.Seed * 7_919 + step;   // dropout depends only on (seed, step)
            using var stepScope = NewDisposeScope();
            optimizer.ZeroGrad();
            double lr = schedule.At(step);
            double loss;
            using (StepDropout.Begin(stepSeed, Device))
            {
                var (ids, mask, types, labels) = Collate(batch, Device);
                var logits = _model.Forward(ids, mask, types);
                var value = nn.functional.cross_entropy(logits.to(ScalarType.Float32), labels);
                loss = value.item<float>();
                if (!double.IsFinite(loss)) throw new TrainingDivergedException(step + 1, null, $"Training diverged at step {step + 1}: the loss became {loss}. Lower the learning rate.");
                if (_hook?.AdditionalLoss() is { } extra) value = value.Plus(extra);
                value.backward();
                tokens += mask.sum().item<long>();
            }
            if (o.MaxGradNorm > 0) nn.utils.clip_grad_norm_(trainable.Select(p => p.parameter).Where(p => p.grad is not null), o.MaxGradNorm);
            optimizer.Step(lr);
            _hook?.AfterOptimizerStep(step + 1);
            losses.Add(loss);
            bool last = step + 1 == o.MaxSteps;
            if (validation is { Count: > 0 } && (last || (o.EvalInterval > 0 && (step + 1) % o.EvalInterval == 0)))
            {
                validationLoss = Evaluate(_model, validation, o.BatchSize).Loss;
                validationHistory.Add((step + 1, validationLoss.Value));
                _model.train();
            }
            var elapsed = clock.Elapsed;
            progress?.Report(new TrainingProgress(step + 1, o.MaxSteps, loss, lr, tokens / elapsed.TotalSeconds, elapsed,
                TimeSpan.FromSeconds(elapsed.TotalSeconds / (step + 1) * (o.MaxSteps - step - 1)), validationLoss));
        }
        _model.eval();
        return new TrainingResult(o.MaxSteps, losses.Count > 0 ? losses[^1] : double.NaN, validationLoss, null, losses, validationHistory);
    }

    /// <summary>Class probabilities [examples][classes] (softmax of the logits), in eval mode, without gradients.</summary>
    public static float[][] Predict(BertForSequenceClassification model, IReadOnlyList<ClassificationExample> examples, int batchSize = 32)
    {
        bool wasTraining = model.training;
        model.eval();
        using var _ = no_grad();
        using var predictionScope = NewDisposeScope();
        var device = model.parameters().First().device;
        var result = new List<float[]>(examples.Count);
        for (int start = 0; start < examples.Count; start += batchSize)
        {
            using var scope = NewDisposeScope();
            var (ids, mask, types, _) = Collate(examples.Skip(start).Take(batchSize).ToList(), device);
            var probabilities = model.Forward(ids, mask, types).to(ScalarType.Float32).softmax(-1).cpu();
            for (int i = 0; i < probabilities.shape[0]; i++) result.Add(probabilities[i].data<float>().ToArray());
        }
        if (wasTraining) model.train();
        return [.. result];
    }

    /// <summary>Mean cross-entropy and accuracy over <paramref name="examples"/>.</summary>
    public static (double Loss, double Accuracy) Evaluate(BertForSequenceClassification model, IReadOnlyList<ClassificationExample> examples, int batchSize = 32)
    {
        var probabilities = Predict(model, examples, batchSize);
        double loss = 0;
        int correct = 0;
        for (int i = 0; i < examples.Count; i++)
        {
            loss -= Math.Log(Math.Max(probabilities[i][examples[i].Label], 1e-12));
            if (Array.IndexOf(probabilities[i], probabilities[i].Max()) == examples[i].Label) correct++;
        }
        return (loss / examples.Count, (double)correct / examples.Count);
    }

    private Device Device => _model.parameters().First().device;

    /// <summary>
    /// One epoch's batches of example indices, drawn from <paramref name="seed"/>. Grouped by length (HF's
    /// group_by_length): the shuffled examples are cut into megabatches of 50 batches, each sorted by length, so a
    /// batch holds examples of similar length and pads little; the batches are then visited in a shuffled order.
    /// </summary>
    internal static List<int[]> EpochBatches(IReadOnlyList<ClassificationExample> examples, int batchSize, bool groupByLength, long seed)
    {
        var random = new Random(unchecked((int)seed));
        var order = Enumerable.Range(0, examples.Count).ToArray();
        random.Shuffle(order);
        if (groupByLength)
        {
            int megabatch = 50 * batchSize;
            for (int start = 0; start < order.Length; start += megabatch)
                Array.Sort(order, start, Math.Min(megabatch, order.Length - start), Comparer<int>.Create((a, b) =>
                    examples[b].Ids.Count != examples[a].Ids.Count ? examples[b].Ids.Count.CompareTo(examples[a].Ids.Count) : a.CompareTo(b)));
        }
        var batches = order.Chunk(batchSize).ToList();
        if (groupByLength) random.Shuffle(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(batches));
        return batches;
    }

    /// <summary>Right-padded ids, attention mask and token types [batch, longest] and labels [batch].</summary>
    private static (Tensor Ids, Tensor Mask, Tensor Types, Tensor Labels) Collate(IReadOnlyList<ClassificationExample> batch, Device device)
    {
        int length = batch.Max(e => e.Ids.Count);
        var ids = new long[batch.Count * length];
        var mask = new long[batch.Count * length];
        var types = new long[batch.Count * length];
        for (int b = 0; b < batch.Count; b++)
        {
            for (int t = 0; t < batch[b].Ids.Count; t++)
            {
                ids[b * length + t] = batch[b].Ids[t];
                mask[b * length + t] = 1;
                types[b * length + t] = batch[b].TypeIds[t];
            }
        }
        return (tensor(ids, [batch.Count, length]).to(device), tensor(mask, [batch.Count, length]).to(device),
            tensor(types, [batch.Count, length]).to(device), tensor(batch.Select(e => (long)e.Label).ToArray()).to(device));
    }
}
