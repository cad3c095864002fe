using MLNetPeft.Architectures;
using MLNetPeft.Runtime;
using MLNetPeft.Tokenization;
using MLNetPeft.Training.Reinforcement;
using MLNetPeft.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Grpo;

/// <summary>
/// Group relative policy optimisation (Shao et al. 2024) as TRL's <c>GRPOTrainer</c> defines it, on the library's
/// <see cref="Trainer"/>: each prompt is answered <see cref="GrpoOptions.NumGenerations"/> times, the weighted sum of the
/// rewards of each completion is compared with its group's (advantage = (r − mean) / std), and the clipped token-level
/// objective is averaged over every completion token of the batch (the DAPO loss TRL defaults to), plus β times the
/// k3 KL to the reference when β &gt; 0. No value model. Completions are sampled fresh for every micro-batch and
/// learned from once (TRL's num_iterations = 1), so the probability ratio is 1 when the loss is computed and only its
/// gradient acts; a run resumes exactly from any checkpoint.
/// </summary>
public sealed class GrpoTrainer
{
    private readonly CausalLanguageModel _policy;
    private readonly TextTokenizer _tokenizer;
    private readonly IReadOnlyList<WeightedReward> _rewards;
    private readonly TrainingOptions _options;
    private readonly GrpoOptions _grpo;
    private readonly ReferenceModel? _reference;
    private readonly ITrainingStepHook? _hook;

    /// <param name="policy">The model that learns (its parameters that require grad train).</param>
    /// <param name="tokenizer">Encodes prompts and decodes completions; it must have an eos token.</param>
    /// <param name="rewards">The rewards summed with their weights.</param>
    /// <param name="options">The training loop's settings; BatchSize counts completions and must be a multiple of NumGenerations.</param>
    /// <param name="grpo">GRPO's settings (TRL's defaults when null).</param>
    /// <param name="adapter">The PEFT method applied to <paramref name="policy"/> (the reference when β &gt; 0 is the policy with it disabled).</param>
    /// <param name="referenceModel">For full fine-tuning with β &gt; 0: a frozen copy of the policy as it starts.</param>
    /// <param name="hook">A tuning method that takes part in each step (AdaLoRA).</param>
    public GrpoTrainer(CausalLanguageModel policy, TextTokenizer tokenizer, IReadOnlyList<WeightedReward> rewards, TrainingOptions options,
        GrpoOptions? grpo = null, PeftModel? adapter = null, CausalLanguageModel? referenceModel = null, ITrainingStepHook? hook = null)
    {
        _policy = policy ?? throw new ArgumentNullException(nameof(policy));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        if (tokenizer.EosId is null) throw new ArgumentException("The tokenizer has no end-of-sequence token, which GRPO needs to end completions.", nameof(tokenizer));
        ArgumentNullException.ThrowIfNull(rewards);
        if (rewards.Count == 0) throw new ArgumentException("GRPO needs at least one reward.", nameof(rewards));
        foreach (var r in rewards)
        {
            if (r?.Function is null || string.IsNullOrWhiteSpace(r.Name)) throw new ArgumentException("Every reward needs a name and a function.", nameof(rewards));
            if (!double.IsFinite(r.Weight)) throw new ArgumentOutOfRangeException(nameof(rewards), r.Weight, $"The weight of reward '{r.Name}' must be a finite number.");
        }
        if (rewards.GroupBy(r => r.Name).FirstOrDefault(g => g.Count() > 1) is { } twice) throw new ArgumentException($"Two rewards are named '{twice.Key}'.", nameof(rewards));
        _rewards = rewards;
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _grpo = grpo ?? new GrpoOptions();
        options.Validate();
        _grpo.Validate();
        if (options.BatchSize % _grpo.NumGenerations != 0)
            throw new ArgumentException($"BatchSize ({options.BatchSize}) counts completions and must be a multiple of NumGenerations ({_grpo.NumGenerations}).", nameof(options));
        // β = 0 compares with nothing: no reference is kept (TRL's default).
        _reference = _grpo.Beta > 0 ? new ReferenceModel("GRPO with Beta > 0", policy, adapter, referenceModel) : null;
        _hook = hook;
    }

    /// <summary>Trains for MaxSteps optimizer updates, each on completions of prompts drawn at random from <paramref name="prompts"/>.</summary>
    public TrainingResult Train(IReadOnlyList<string> prompts, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        if (prompts.Count == 0) throw new ArgumentException("There are no prompts to learn from.", nameof(prompts));
        var promptIds = prompts.Select((p, i) => p is null ? throw new ArgumentException($"Prompt {i} is null.", nameof(prompts)) : _tokenizer.Encode(p)).ToList();
        if (promptIds.FindIndex(ids => ids.Count == 0) is var empty and >= 0) throw new ArgumentException($"Prompt {empty} has no tokens.", nameof(prompts));
        return new Trainer(new GroupObjective(this, prompts, promptIds), _options, _hook).Train(progress, cancellationToken);
    }

    /// <summary>
    /// Advantages [rows] of rewards [rows] laid out as consecutive groups of <paramref name="groupSize"/>: r − the
    /// group's mean, divided by the group's standard deviation (Bessel-corrected, as torch.std) + 1e-4 when
    /// <paramref name="scale"/>; and each row's group standard deviation.
    /// </summary>
    public static (Tensor Advantages, Tensor GroupStd) GroupAdvantages(Tensor rewards, int groupSize, bool scale)
    {
        using var scope = NewDisposeScope();
        var groups = rewards.to(ScalarType.Float32).view(-1, groupSize);
        var mean = groups.mean([1], keepdim: true);
        var std = groups.std(1, unbiased: true, keepdim: true).expand_as(groups);
        var advantages = groups - mean;
        if (scale) advantages = advantages / std.Plus(1e-4);
        return (advantages.reshape(-1).MoveToOuterDisposeScope(), std.reshape(-1).MoveToOuterDisposeScope());
    }

    /// <summary>
    /// The DAPO-style GRPO loss: per token min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A), negated, plus β·k3 KL when reference
    /// log-probabilities are given, summed over the masked tokens of all rows and divided by their number.
    /// </summary>
    public static Tensor Loss(Tensor logProbs, Tensor oldLogProbs, Tensor advantages, Tensor mask, double epsilon, double epsilonHigh,
        double beta = 0, Tensor? referenceLogProbs = null)
    {
        using var scope = NewDisposeScope();
        var (perToken, _) = PolicyGradient.ClippedPolicyLosses(logProbs, oldLogProbs, advantages.unsqueeze(1).expand_as(logProbs), epsilon, epsilonHigh);
        if (referenceLogProbs is not null && beta > 0) perToken = perToken.Plus(PolicyGradient.Kl(logProbs, referenceLogProbs, KlEstimator.K3).Times(beta));
        return PolicyGradient.MaskedMean(perToken, mask).MoveToOuterDisposeScope();
    }

    private sealed class GroupObjective(GrpoTrainer trainer, IReadOnlyList<string> prompts, IReadOnlyList<IReadOnlyList<int>> promptIds) : TrainingObjective
    {
        public override string MethodName => "grpo";
        public override PretrainedModule Model => trainer._policy;
        public override int ExampleCount => prompts.Count;
        public override string DataFingerprint() => Training.DataFingerprint.Of(promptIds);

        public override BatchLoss? Loss(int step, int micro, Random sampler)
        {
            var g = trainer._grpo;
            int groups = trainer._options.BatchSize / g.NumGenerations;
            var picked = Enumerable.Range(0, groups).Select(_ => sampler.Next(prompts.Count)).SelectMany(i => Enumerable.Repeat(i, g.NumGenerations)).ToArray();
            using var rollout = Rollout.Sample(trainer._policy, trainer._tokenizer, picked.Select(i => prompts[i]).ToList(), picked.Select(i => promptIds[i]).ToList(),
                g.Sampling, seed: sampler.NextInt64());
            var metrics = new Dictionary<string, double>();
            var total = new double[rollout.Count];
            foreach (var reward in trainer._rewards)
            {
                var scores = rollout.Score(reward.Function, $"Reward '{reward.Name}'");
                for (int i = 0; i < scores.Length; i++) total[i] += reward.Weight * scores[i];
                metrics[$"rewards/{reward.Name}/mean"] = scores.Average();
            }
            var (advantages, groupStd) = GroupAdvantages(tensor(total.Select(v => (float)v).ToArray()).to(rollout.Ids.device), g.NumGenerations, g.ScaleRewards);

            var (logProbs, entropy) = Rollout.ResponseLogProbs(trainer._policy, rollout.Ids, rollout.AttentionMask, rollout.Responses, rollout.ResponseMask,
                rollout.ContextLength, g.Sampling.Temperature);
            var referenceLogProbs = trainer._reference?.Run(reference => Rollout.ResponseLogProbs(reference, rollout.Ids, rollout.AttentionMask,
                rollout.Responses, rollout.ResponseMask, rollout.ContextLength, g.Sampling.Temperature).LogProbs);
            var loss = GrpoTrainer.Loss(logProbs, logProbs.detach(), advantages, rollout.ResponseMask, g.Epsilon, g.EpsilonHigh ?? g.Epsilon, g.Beta, referenceLogProbs);

            using (no_grad())
            {
                metrics["reward"] = total.Average();
                metrics["reward_std"] = groupStd.mean().item<float>();
                metrics["frac_reward_zero_std"] = groupStd.lt(Scalars.Of(1e-6)).to(ScalarType.Float32).mean().item<float>();
                metrics["completions/mean_length"] = rollout.ResponseLengths.Average();
                metrics["completions/clipped_ratio"] = rollout.ResponseLengths.Zip(rollout.EndedWithEos).Count(x => !x.Second && x.First == g.Sampling.MaxNewTokens) / (double)rollout.Count;
                metrics["entropy"] = PolicyGradient.MaskedMean(entropy, rollout.ResponseMask).item<float>();
                if (referenceLogProbs is not null)
                    metrics["kl"] = PolicyGradient.MaskedMean(PolicyGradient.Kl(logProbs, referenceLogProbs, KlEstimator.K3), rollout.ResponseMask).item<float>();
            }
            return new BatchLoss(loss, (long)rollout.AttentionMask.sum().item<long>(), metrics);
        }
    }
}
