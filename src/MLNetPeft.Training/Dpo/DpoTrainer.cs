using MLNetPeft.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Dpo;

/// <summary>
/// Direct preference optimisation (Rafailov et al. 2023) as TRL's <c>DPOTrainer</c> defines it, on the library's
/// <see cref="Trainer"/>: the policy's log-probabilities of the chosen and rejected responses (summed over the response
/// tokens; both sides in one forward pass) are compared with a reference model's, and the loss of
/// <see cref="DpoOptions.LossType"/> pushes the log-ratio of chosen over rejected above the reference's. The reference
/// is the policy itself with its adapters disabled when a PEFT method trains it (<see cref="PeftModel.DisableAdapters"/>,
/// no second copy in memory), or a frozen copy of the starting model for full fine-tuning; it always runs in eval mode
/// without gradients. A micro-batch is <see cref="TrainingOptions.BatchSize"/> pairs drawn at random from (seed, step).
/// </summary>
public sealed class DpoTrainer
{
    private readonly CausalLanguageModel _policy;
    private readonly TrainingOptions _options;
    private readonly DpoOptions _dpo;
    private readonly ReferenceModel _reference;
    private readonly ITrainingStepHook? _hook;

    /// <param name="policy">The model that learns (its parameters that require grad train).</param>
    /// <param name="options">The training loop's settings.</param>
    /// <param name="dpo">DPO's settings (TRL's defaults when null).</param>
    /// <param name="adapter">The PEFT method applied to <paramref name="policy"/>: the reference is the policy with it disabled.</param>
    /// <param name="referenceModel">For full fine-tuning: a frozen copy of the policy as it starts (never trained here).</param>
    /// <param name="hook">A tuning method that takes part in each step (AdaLoRA).</param>
    public DpoTrainer(CausalLanguageModel policy, TrainingOptions options, DpoOptions? dpo = null, PeftModel? adapter = null,
        CausalLanguageModel? referenceModel = null, ITrainingStepHook? hook = null)
    {
        _policy = policy ?? throw new ArgumentNullException(nameof(policy));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _dpo = dpo ?? new DpoOptions();
        _reference = new ReferenceModel("DPO", policy, adapter, referenceModel);
        _hook = hook;
        options.Validate();
        _dpo.Validate();
    }

    /// <summary>Trains on <paramref name="train"/>; the validation loss (when given) is the DPO loss on <paramref name="validation"/>.</summary>
    public TrainingResult Train(PreferencePairs train, PreferencePairs? validation = null, IProgress<TrainingProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(train);
        float[][]? precomputed = _dpo.PrecomputeReferenceLogProbs ? ReferenceLogProbs(train) : null;
        return new Trainer(new PreferenceObjective(this, train, precomputed, validation), _options, _hook).Train(progress, cancellationToken);
    }

    /// <summary>
    /// The reference's log-probabilities of each pair's chosen and rejected response ([0] chosen, [1] rejected; averaged
    /// per token for IPO), in eval mode, without gradients.
    /// </summary>
    public float[][] ReferenceLogProbs(PreferencePairs pairs, int? batchSize = null)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        using var scope = NewDisposeScope();
        var chosen = new List<float>();
        var rejected = new List<float>();
        int size = batchSize ?? _options.BatchSize;
        for (int start = 0; start < pairs.Count; start += size)
        {
            using var batchScope = NewDisposeScope();
            var (c, r) = Reference(pairs.Pairs.Skip(start).Take(size).ToList());
            chosen.AddRange(c.cpu().data<float>().ToArray());
            rejected.AddRange(r.cpu().data<float>().ToArray());
        }
        return [chosen.ToArray(), rejected.ToArray()];
    }

    /// <summary>DPO's loss and TRL's metrics over every pair, policy and reference in eval mode, without gradients.</summary>
    public DpoMetrics Evaluate(PreferencePairs pairs, int? batchSize = null)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        bool wasTraining = _policy.training;
        using var evaluationScope = NewDisposeScope();
        var sums = new Dictionary<string, double>();
        double lossSum = 0;
        int size = batchSize ?? _options.BatchSize;
        try
        {
            for (int start = 0; start < pairs.Count; start += size)
            {
                using var scope = NewDisposeScope();
                var batch = pairs.Pairs.Skip(start).Take(size).ToList();
                var (refChosen, refRejected) = Reference(batch);
                _policy.eval();
                using var _ = no_grad();
                var (loss, metrics) = BatchLossAndMetrics(batch, refChosen, refRejected);
                lossSum += loss.item<float>() * batch.Count;
                foreach (var (name, value) in metrics) sums[name] = sums.GetValueOrDefault(name) + value * batch.Count;
            }
        }
        finally
        {
            if (wasTraining) _policy.train();
        }
        double Mean(string name) => sums[name] / pairs.Count;
        return new DpoMetrics(pairs.Count, lossSum / pairs.Count, Mean("rewards/chosen"), Mean("rewards/rejected"), Mean("rewards/accuracies"),
            Mean("rewards/margins"), Mean("logps/chosen"), Mean("logps/rejected"));
    }

    /// <summary>
    /// Per-pair DPO losses [pairs] of <see cref="DpoOptions.LossType"/> from the policy's and the reference's
    /// log-probabilities of the chosen and rejected responses (the RPO term is added by the trainer, not here), in float32.
    /// </summary>
    public static Tensor Losses(Tensor policyChosen, Tensor policyRejected, Tensor referenceChosen, Tensor referenceRejected, DpoOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        using var scope = NewDisposeScope();
        var h = (policyChosen.to(ScalarType.Float32) - policyRejected.to(ScalarType.Float32))
            - (referenceChosen.to(ScalarType.Float32) - referenceRejected.to(ScalarType.Float32));
        double beta = options.Beta, epsilon = options.LabelSmoothing;
        var scaled = h.Times(beta);
        var losses = options.LossType switch
        {
            DpoLossType.Sigmoid => nn.functional.logsigmoid(scaled).Times(-(1 - epsilon)) - nn.functional.logsigmoid(scaled.neg()).Times(epsilon),
            DpoLossType.Robust => nn.functional.logsigmoid(scaled).Times(-(1 - epsilon)).Plus(nn.functional.logsigmoid(scaled.neg()).Times(epsilon)).Over(1 - 2 * epsilon),
            DpoLossType.Hinge => scaled.neg().Plus(1.0).relu(),
            DpoLossType.Ipo => Square(h.Plus(-1 / (2 * beta))),
            _ => throw new ArgumentOutOfRangeException(nameof(options), options.LossType, "unknown DPO loss"),
        };
        return losses.MoveToOuterDisposeScope();
    }

    private static Tensor Square(Tensor x) => x.mul(x);

    /// <summary>
    /// Log-probabilities [pairs] of each pair's chosen and rejected response under <paramref name="model"/> (one forward
    /// pass over both sides, right-padded), summed over the response tokens or, with <paramref name="average"/>, their
    /// mean; and the mean negative log-likelihood per chosen-response token (RPO's SFT term).
    /// </summary>
    /// <exception cref="ArgumentException">A side has no response token after a first token (its prompt is empty and its response one token).</exception>
    public static (Tensor Chosen, Tensor Rejected, Tensor ChosenNll) ResponseLogProbs(CausalLanguageModel model, IReadOnlyList<PreferencePair> pairs, bool average = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(pairs);
        if (pairs.Count == 0) throw new ArgumentException("There are no pairs.", nameof(pairs));
        using var scope = NewDisposeScope();
        int n = pairs.Count;
        var rows = pairs.Select(p => p.Chosen).Concat(pairs.Select(p => p.Rejected)).ToList();
        var promptLengths = pairs.Select(p => p.ChosenPromptLength).Concat(pairs.Select(p => p.RejectedPromptLength)).ToList();
        var (nll, tokenCounts) = ResponseNll(model, rows, promptLengths, b => $"Pair {b % n}: the {(b < n ? "chosen" : "rejected")} side", nameof(pairs));
        var logps = nll.neg();
        if (average) logps = logps / tokenCounts;
        var chosenNll = nll.narrow(0, 0, n).sum() / tokenCounts.narrow(0, 0, n).sum();
        return (logps.narrow(0, 0, n).MoveToOuterDisposeScope(), logps.narrow(0, n, n).MoveToOuterDisposeScope(), chosenNll.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// The negative log-likelihood [rows] of each row's response tokens (those from <paramref name="promptLengths"/>[b] on,
    /// summed) under <paramref name="model"/>, in one right-padded forward pass, and the number of response tokens [rows].
    /// </summary>
    /// <param name="rowName">Names row b in the error for a row without a response token to score.</param>
    /// <param name="parameterName">The caller's parameter that holds the rows, named in that error.</param>
    internal static (Tensor Nll, Tensor TokenCounts) ResponseNll(CausalLanguageModel model, IReadOnlyList<IReadOnlyList<int>> rows,
        IReadOnlyList<int> promptLengths, Func<int, string> rowName, string parameterName)
    {
        using var scope = NewDisposeScope();
        int length = rows.Max(r => r.Count);
        var device = model.parameters().First().device;
        // Position t predicts token t + 1: a response token at t ≥ 1 is the target of position t − 1.
        var targets = new long[rows.Count * length];
        Array.Fill(targets, IgnoreIndex);
        for (int b = 0; b < rows.Count; b++)
        {
            int first = Math.Max(promptLengths[b], 1);
            if (first >= rows[b].Count)
                throw new ArgumentException($"{rowName(b)} has no response token to score " +
                    "(an empty prompt and a one-token response); give every prompt at least one token, e.g. BOS.", parameterName);
            for (int t = first; t < rows[b].Count; t++) targets[b * length + t - 1] = rows[b][t];
        }
        var ids = RightPadding.Values(rows, length, 0, device);
        var mask = RightPadding.Mask(rows, length, device);
        var target = tensor(targets, [rows.Count, length]).to(device);
        var logits = model.Forward(ids, mask).to(ScalarType.Float32);
        var nll = nn.functional.cross_entropy(logits.view(-1, logits.shape[^1]), target.view(-1), ignore_index: IgnoreIndex, reduction: nn.Reduction.None)
            .view(rows.Count, length);
        var tokenCounts = target.ne(Scalars.Of(IgnoreIndex)).sum(1).to(ScalarType.Float32);
        return (nll.sum(1).MoveToOuterDisposeScope(), tokenCounts.MoveToOuterDisposeScope());
    }

    private const long IgnoreIndex = -100;

    /// <summary>The reference's response log-probabilities of a batch: in eval mode, without gradients, adapters disabled or the frozen copy.</summary>
    private (Tensor Chosen, Tensor Rejected) Reference(IReadOnlyList<PreferencePair> batch) => _reference.Run(model =>
    {
        var (chosen, rejected, nll) = ResponseLogProbs(model, batch, Average);
        nll.Dispose();
        return (chosen, rejected);
    });

    private bool Average => _dpo.LossType == DpoLossType.Ipo;   // TRL's IPO compares per-token average log-probabilities

    /// <summary>The batch's loss (DPO's, plus RPO's term) and TRL's metrics, from the policy in its current mode.</summary>
    private (Tensor Loss, Dictionary<string, double> Metrics) BatchLossAndMetrics(IReadOnlyList<PreferencePair> batch, Tensor referenceChosen, Tensor referenceRejected)
    {
        using var scope = NewDisposeScope();
        var (chosen, rejected, chosenNll) = ResponseLogProbs(_policy, batch, Average);
        var loss = Losses(chosen, rejected, referenceChosen, referenceRejected, _dpo).mean();
        var metrics = new Dictionary<string, double>();
        if (_dpo.RpoAlpha is { } alpha)
        {
            loss = loss.Plus(chosenNll.Times(alpha));
            metrics["nll_loss"] = chosenNll.item<float>();
        }
        using (no_grad())
        {
            var chosenRewards = (chosen - referenceChosen).Times(_dpo.Beta);
            var rejectedRewards = (rejected - referenceRejected).Times(_dpo.Beta);
            metrics["rewards/chosen"] = chosenRewards.mean().item<float>();
            metrics["rewards/rejected"] = rejectedRewards.mean().item<float>();
            metrics["rewards/accuracies"] = chosenRewards.gt(rejectedRewards).to(ScalarType.Float32).mean().item<float>();
            metrics["rewards/margins"] = (chosenRewards - rejectedRewards).mean().item<float>();
            metrics["logps/chosen"] = chosen.mean().item<float>();
            metrics["logps/rejected"] = rejected.mean().item<float>();
        }
        return (loss.MoveToOuterDisposeScope(), metrics);
    }

    private sealed class PreferenceObjective(DpoTrainer trainer, PreferencePairs train, float[][]? precomputed, PreferencePairs? validation) : TrainingObjective
    {
        public override string MethodName => "dpo";
        public override PretrainedModule Model => trainer._policy;

        public override int ExampleCount => train.Count;

        public override string DataFingerprint() => train.Fingerprint();

        public override BatchLoss? Loss(int step, int micro, Random sampler)
        {
            var indices = Enumerable.Range(0, trainer._options.BatchSize).Select(_ => sampler.Next(train.Count)).ToArray();
            var batch = indices.Select(i => train.Pairs[i]).ToList();
            Tensor referenceChosen, referenceRejected;
            if (precomputed is not null)
            {
                var device = trainer._policy.parameters().First().device;
                referenceChosen = tensor(indices.Select(i => precomputed[0][i]).ToArray()).to(device);
                referenceRejected = tensor(indices.Select(i => precomputed[1][i]).ToArray()).to(device);
            }
            else
            {
                (referenceChosen, referenceRejected) = trainer.Reference(batch);
            }
            if (trainer._dpo.DisableDropout) trainer._policy.eval();   // gradients flow in eval mode; only dropout is off
            else trainer._policy.train();
            var (loss, metrics) = trainer.BatchLossAndMetrics(batch, referenceChosen, referenceRejected);
            return new BatchLoss(loss, batch.Sum(p => (long)p.Chosen.Count + p.Rejected.Count), metrics);
        }

        public override double? ValidationLoss() => validation is null ? null : trainer.Evaluate(validation).Loss;
    }
}
