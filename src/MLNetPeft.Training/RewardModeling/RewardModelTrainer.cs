using MLNetPeft.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Training.RewardModeling;

/// <summary>A reward model's figures on preference pairs: loss, accuracy (chosen scored strictly higher), margin and reward statistics.</summary>
public sealed record RewardMetrics(int Pairs, double Loss, double Accuracy, double MeanMargin, double RewardMean, double RewardStd)
{
    /// <summary>The figures of the rewards of each pair's chosen and rejected side; the loss is −mean log σ(chosen − rejected).</summary>
    public static RewardMetrics Of(IReadOnlyList<float> chosen, IReadOnlyList<float> rejected)
    {
        ArgumentNullException.ThrowIfNull(chosen);
        ArgumentNullException.ThrowIfNull(rejected);
        if (chosen.Count != rejected.Count || chosen.Count == 0) throw new ArgumentException($"{chosen.Count} chosen and {rejected.Count} rejected rewards; give one of each per pair.", nameof(rejected));
        var differences = chosen.Zip(rejected, (c, r) => (double)c - r).ToList();
        var all = chosen.Concat(rejected).Select(v => (double)v).ToList();
        double mean = all.Average();
        // −log σ(d) = log(1 + e^−d), computed without overflow for large |d|.
        double loss = differences.Average(d => d >= 0 ? Math.Log(1 + Math.Exp(-d)) : -d + Math.Log(1 + Math.Exp(d)));
        return new RewardMetrics(chosen.Count, loss, differences.Count(d => d > 0) / (double)chosen.Count, differences.Average(),
            mean, Math.Sqrt(all.Sum(v => (v - mean) * (v - mean)) / all.Count));
    }
}

/// <summary>
/// Pairwise reward modelling as TRL's <c>RewardTrainer</c> defines it, on the library's <see cref="Trainer"/>: a
/// <see cref="SequenceClassificationModel"/> with one label (a causal LM's <see cref="CausalLmForSequenceClassification"/>,
/// read at each row's last real token, or a <see cref="BertForSequenceClassification"/>, read from its pooled output)
/// scores the chosen and the rejected side of each pair (both in one forward pass), and the loss is −log σ(r_chosen − r_rejected − margin), plus
/// center_rewards_coefficient · mean((r_chosen + r_rejected)²) when a coefficient is given. A micro-batch is
/// <see cref="TrainingOptions.BatchSize"/> pairs drawn at random from (seed, step).
/// </summary>
public sealed class RewardModelTrainer
{
    private readonly SequenceClassificationModel _model;
    private readonly TrainingOptions _options;
    private readonly double? _centerRewardsCoefficient;
    private readonly ITrainingStepHook? _hook;

    /// <param name="model">The reward model (one label); its parameters that require grad train.</param>
    /// <param name="options">The training loop's settings.</param>
    /// <param name="centerRewardsCoefficient">TRL's center_rewards_coefficient (e.g. 0.01): pulls the rewards' mean towards 0; null leaves it free.</param>
    /// <param name="hook">A tuning method that takes part in each step (AdaLoRA).</param>
    public RewardModelTrainer(SequenceClassificationModel model, TrainingOptions options, double? centerRewardsCoefficient = null, ITrainingStepHook? hook = null)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        if (model.NumLabels != 1) throw new ArgumentException($"A reward model has one output (num_labels = 1); this model has {model.NumLabels}.", nameof(model));
        if (centerRewardsCoefficient is { } c && !(c >= 0 && double.IsFinite(c)))
            throw new ArgumentOutOfRangeException(nameof(centerRewardsCoefficient), c, "must be a finite number ≥ 0");
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _centerRewardsCoefficient = centerRewardsCoefficient;
        _hook = hook;
        options.Validate();
    }

    /// <summary>Trains on <paramref name="train"/>; the validation loss (when given) is the pairwise loss on <paramref name="validation"/>.</summary>
    public TrainingResult Train(PreferencePairs train, PreferencePairs? validation = null, IProgress<TrainingProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(train);
        return new Trainer(new PairwiseObjective(this, train, validation), _options, _hook).Train(progress, cancellationToken);
    }

    /// <summary>TRL's reward loss: −mean log σ(chosen − rejected − margin) + coefficient · mean((chosen + rejected)²), in float32.</summary>
    public static Tensor PairwiseLoss(Tensor chosen, Tensor rejected, Tensor? margin = null, double? centerRewardsCoefficient = null)
    {
        using var scope = NewDisposeScope();
        var c = chosen.to(ScalarType.Float32);
        var r = rejected.to(ScalarType.Float32);
        var difference = c - r;
        if (margin is not null) difference = difference - margin.to(ScalarType.Float32);
        var loss = -nn.functional.logsigmoid(difference).mean();
        if (centerRewardsCoefficient is { } coefficient)
        {
            var sum = c.Plus(r);
            loss = loss.Plus(sum.mul(sum).mean().Times(coefficient));
        }
        return loss.MoveToOuterDisposeScope();
    }

    /// <summary>Rewards [pairs] of the chosen and the rejected sides, from one forward pass over both.</summary>
    public static (Tensor Chosen, Tensor Rejected) Rewards(SequenceClassificationModel model, IReadOnlyList<PreferencePair> pairs)
    {
        using var scope = NewDisposeScope();
        var rewards = Rewards(model, [.. pairs.Select(p => p.Chosen), .. pairs.Select(p => p.Rejected)]);
        return (rewards.narrow(0, 0, pairs.Count).MoveToOuterDisposeScope(), rewards.narrow(0, pairs.Count, pairs.Count).MoveToOuterDisposeScope());
    }

    /// <summary>The reward [rows] (float32) of each token sequence, right-padded into one batch, in the model's current mode.</summary>
    public static Tensor Rewards(SequenceClassificationModel model, IReadOnlyList<IReadOnlyList<int>> sequences)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (sequences.Count == 0 || sequences.Any(s => s.Count == 0)) throw new ArgumentException("Every sequence to score needs at least one token.", nameof(sequences));
        using var scope = NewDisposeScope();
        var (ids, mask) = Collate(sequences, model);
        return model.Forward(ids, mask).squeeze(-1).to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>Loss, accuracy, mean margin and reward statistics over every pair, in eval mode, without gradients.</summary>
    public static RewardMetrics Evaluate(SequenceClassificationModel model, PreferencePairs pairs, int batchSize = 16, double? centerRewardsCoefficient = null)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        bool wasTraining = model.training;
        model.eval();
        using var _ = no_grad();
        using var evaluationScope = NewDisposeScope();
        var chosen = new List<float>();
        var rejected = new List<float>();
        double lossSum = 0;
        for (int start = 0; start < pairs.Count; start += batchSize)
        {
            using var scope = NewDisposeScope();
            var batch = pairs.Pairs.Skip(start).Take(batchSize).ToList();
            var (c, r) = Rewards(model, batch);
            lossSum += PairwiseLoss(c, r, Margins(batch, c.device), centerRewardsCoefficient).item<float>() * batch.Count;
            chosen.AddRange(c.cpu().data<float>().ToArray());
            rejected.AddRange(r.cpu().data<float>().ToArray());
        }
        if (wasTraining) model.train();
        // The loss is the training objective's (margins and centring included).
        return RewardMetrics.Of(chosen, rejected) with { Loss = lossSum / pairs.Count };
    }

    private static Tensor? Margins(IReadOnlyList<PreferencePair> batch, Device device) =>
        batch.Any(p => p.Margin != 0) ? tensor(batch.Select(p => p.Margin).ToArray()).to(device) : null;

    /// <summary>Right-padded ids and attention mask [rows, longest]; the padding id is the config's pad_token_id (or 0), which the mask hides.</summary>
    private static (Tensor Ids, Tensor Mask) Collate(IReadOnlyList<IReadOnlyList<int>> rows, SequenceClassificationModel model)
    {
        int length = rows.Max(r => r.Count);
        var device = model.parameters().First().device;
        return (RightPadding.Values(rows, length, model.PaddingId, device), RightPadding.Mask(rows, length, device));
    }

    private sealed class PairwiseObjective(RewardModelTrainer trainer, PreferencePairs train, PreferencePairs? validation) : TrainingObjective
    {
        public override string MethodName => "reward_modeling";
        public override PretrainedModule Model => trainer._model;

        public override int ExampleCount => train.Count;

        public override string DataFingerprint() => train.Fingerprint();

        public override BatchLoss? Loss(int step, int micro, Random sampler)
        {
            var batch = Enumerable.Range(0, trainer._options.BatchSize).Select(_ => train.Pairs[sampler.Next(train.Count)]).ToList();
            var (chosen, rejected) = Rewards(trainer._model, batch);
            long tokens = batch.Sum(p => (long)p.Chosen.Count + p.Rejected.Count);
            return new BatchLoss(PairwiseLoss(chosen, rejected, Margins(batch, chosen.device), trainer._centerRewardsCoefficient), tokens);
        }

        public override double? ValidationLoss() =>
            validation is null ? null : Evaluate(trainer._model, validation, trainer._options.BatchSize, trainer._centerRewardsCoefficient).Loss;
    }
}
