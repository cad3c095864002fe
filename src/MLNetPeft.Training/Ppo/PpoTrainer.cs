using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using MLNetPeft.Runtime;
using MLNetPeft.Tokenization;
using MLNetPeft.Training.Reinforcement;
using MLNetPeft.Training.RewardModeling;
using MLNetPeft.Tuners;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Ppo;

/// <summary>
/// Proximal policy optimisation for language models as TRL's <c>PPOTrainer</c> runs it, on the library's
/// <see cref="Trainer"/>: the policy samples responses to a batch of prompts; a reward scores them; the per-token reward
/// is −kl_coef · KL(π ‖ π_ref) with the score added at each response's last token; GAE (γ, λ) over the value model's
/// estimates gives advantages (whitened) and returns; then several epochs of minibatch updates minimise the clipped
/// policy loss plus vf_coef times the clipped value loss. The reference is the policy with its adapter disabled (PEFT)
/// or a frozen copy (full fine-tuning). Dropout is off throughout, as in TRL. A checkpoint holds the rollout being
/// learned from, so a run resumed mid-rollout continues exactly.
/// </summary>
/// <remarks>
/// One deliberate difference from TRL: TRL adds the score one position after the last response token (a known
/// off-by-one, masked for the value loss but not for GAE); here it lands on the last real token, where the value of
/// the finished response belongs.
/// </remarks>
public sealed class PpoTrainer
{
    private readonly PolicyAndValueModel _model;
    private readonly TextTokenizer _tokenizer;
    private readonly IRewardFunction _reward;
    private readonly TrainingOptions _options;
    private readonly PpoOptions _ppo;
    private readonly ReferenceModel _reference;
    private readonly ITrainingStepHook? _hook;

    /// <param name="policy">The model that learns (its parameters that require grad train).</param>
    /// <param name="valueModel">The critic, a separate model with one output read at every position; all its parameters that require grad train.</param>
    /// <param name="tokenizer">Encodes prompts and decodes responses; it must have an eos token.</param>
    /// <param name="reward">Scores each (prompt, response).</param>
    /// <param name="options">The training loop's settings; BatchSize is the micro-batch of rollout rows per forward pass.</param>
    /// <param name="ppo">PPO's settings (TRL's defaults when null).</param>
    /// <param name="adapter">The PEFT method applied to <paramref name="policy"/>: the reference is the policy with it disabled.</param>
    /// <param name="referenceModel">For full fine-tuning: a frozen copy of the policy as it starts.</param>
    /// <param name="hook">A tuning method that takes part in each step (AdaLoRA).</param>
    public PpoTrainer(CausalLanguageModel policy, CausalLmForSequenceClassification valueModel, TextTokenizer tokenizer, IRewardFunction reward,
        TrainingOptions options, PpoOptions? ppo = null, PeftModel? adapter = null, CausalLanguageModel? referenceModel = null, ITrainingStepHook? hook = null)
    {
        ArgumentNullException.ThrowIfNull(policy);
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        if (tokenizer.EosId is null) throw new ArgumentException("The tokenizer has no end-of-sequence token, which PPO needs to end responses.", nameof(tokenizer));
        _reward = reward ?? throw new ArgumentNullException(nameof(reward));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _ppo = ppo ?? new PpoOptions();
        _reference = new ReferenceModel("PPO", policy, adapter, referenceModel);
        _model = new PolicyAndValueModel(policy, valueModel);
        _hook = hook;
        options.Validate();
        _ppo.Validate();
    }

    /// <summary>Prompts per rollout batch: NumMiniBatches × BatchSize × GradientAccumulationSteps.</summary>
    public int RolloutRows => _ppo.NumMiniBatches * _options.BatchSize * _options.GradientAccumulationSteps;

    /// <summary>Trains for MaxSteps optimizer updates on rollouts of prompts drawn at random from <paramref name="prompts"/>.</summary>
    /// <exception cref="TrainingDivergedException">A loss (and so a probability ratio) became NaN or infinite.</exception>
    public TrainingResult Train(IReadOnlyList<string> prompts, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        if (prompts.Count == 0) throw new ArgumentException("There are no prompts to learn from.", nameof(prompts));
        var promptIds = prompts.Select((p, i) => p is null ? throw new ArgumentException($"Prompt {i} is null.", nameof(prompts)) : _tokenizer.Encode(p)).ToList();
        if (promptIds.FindIndex(ids => ids.Count == 0) is var empty and >= 0) throw new ArgumentException($"Prompt {empty} has no tokens.", nameof(prompts));
        using var objective = new PpoObjective(this, prompts, promptIds);
        return new Trainer(objective, _options, _hook).Train(progress, cancellationToken);
    }

    /// <summary>
    /// The per-token rewards [rows, response columns]: −kl_coef times the KL estimate at every response token, plus
    /// each row's score at its last real token; zero at padding.
    /// </summary>
    public static Tensor TokenRewards(Rollout rollout, Tensor logProbs, Tensor referenceLogProbs, IReadOnlyList<float> scores, double klCoef, KlEstimator estimator)
    {
        ArgumentNullException.ThrowIfNull(rollout);
        using var scope = NewDisposeScope();
        return TokenRewards(rollout, MaskedKl(rollout, logProbs, referenceLogProbs, estimator), scores, klCoef).MoveToOuterDisposeScope();
    }

    /// <summary>The per-token KL estimate on the response tokens, zero at padding.</summary>
    private static Tensor MaskedKl(Rollout rollout, Tensor logProbs, Tensor referenceLogProbs, KlEstimator estimator) =>
        PolicyGradient.Kl(logProbs, referenceLogProbs, estimator) * rollout.ResponseMask;

    /// <summary>The per-token rewards from an already masked KL estimate (what the rollout also reports as objective/kl).</summary>
    private static Tensor TokenRewards(Rollout rollout, Tensor maskedKl, IReadOnlyList<float> scores, double klCoef)
    {
        using var scope = NewDisposeScope();
        var score = tensor(scores.ToArray()).to(maskedKl.device).unsqueeze(1);
        using var coefficient = Scalars.Owned(-klCoef);   // adaptive: changes from rollout to rollout
        return maskedKl.mul(coefficient).Plus(rollout.LastTokenIndicator() * score).MoveToOuterDisposeScope();
    }

    /// <summary>What a rollout batch gives the updates: its log-probabilities and values at sampling time, advantages and returns.</summary>
    private sealed class Experience(int index, Rollout rollout, Tensor logProbs, Tensor values, Tensor advantages, Tensor returns, double klCoef,
        IReadOnlyDictionary<string, double> metrics) : IDisposable
    {
        public int Index { get; } = index;
        public Rollout Rollout { get; } = rollout;
        public Tensor LogProbs { get; } = logProbs;
        public Tensor Values { get; } = values;
        public Tensor Advantages { get; } = advantages;
        public Tensor Returns { get; } = returns;
        /// <summary>The KL coefficient after this rollout (the adaptive controller's state).</summary>
        public double KlCoef { get; } = klCoef;
        public IReadOnlyDictionary<string, double> Metrics { get; } = metrics;

        public void Dispose()
        {
            Rollout.Dispose();
            LogProbs.Dispose();
            Values.Dispose();
            Advantages.Dispose();
            Returns.Dispose();
        }
    }

    private sealed class PpoObjective(PpoTrainer trainer, IReadOnlyList<string> prompts, IReadOnlyList<IReadOnlyList<int>> promptIds) : TrainingObjective, IDisposable
    {
        public override string MethodName => "ppo";
        private Experience? _experience;
        private double _klCoef = trainer._ppo.KlCoef;

        public override PretrainedModule Model => trainer._model;
        public override int ExampleCount => prompts.Count;
        public override string DataFingerprint() => Training.DataFingerprint.Of(promptIds);

        private int UpdatesPerRollout => trainer._ppo.NumPpoEpochs * trainer._ppo.NumMiniBatches;

        public override BatchLoss? Loss(int step, int micro, Random sampler)
        {
            var o = trainer._options;
            int rollout = step / UpdatesPerRollout, within = step % UpdatesPerRollout;
            if (_experience?.Index != rollout)
            {
                if (within != 0 || micro != 0)
                    throw new InvalidDataException($"Step {step + 1} continues rollout {rollout + 1}, which the checkpoint does not hold.");
                var next = Collect(rollout, sampler);
                _experience?.Dispose();
                _experience = next;
                _klCoef = next.KlCoef;
            }
            var e = _experience;
            int epoch = within / trainer._ppo.NumMiniBatches, miniBatch = within % trainer._ppo.NumMiniBatches;
            // Each epoch visits the rollout in its own order, derived from (seed, rollout, epoch) so resuming needs no state for it.
            var order = Enumerable.Range(0, e.Rollout.Count).ToArray();
            new Random(unchecked((int)(o.Seed * 104_729 + rollout * 7_907 + epoch))).Shuffle(order);
            int miniBatchRows = o.BatchSize * o.GradientAccumulationSteps;
            var rows = tensor(order.Skip(miniBatch * miniBatchRows + micro * o.BatchSize).Take(o.BatchSize).Select(i => (long)i).ToArray()).to(e.Rollout.Ids.device);

            var model = trainer._model;
            model.eval();   // TRL disables dropout in PPO; gradients still flow
            var (ids, mask, responses, responseMask) = e.Rollout.Rows(rows);
            var (logProbs, entropy) = Rollout.ResponseLogProbs(model.Policy, ids, mask, responses, responseMask, e.Rollout.ContextLength, trainer._ppo.Sampling.Temperature);
            var values = Rollout.Values(model.Value, ids, mask, responseMask, e.Rollout.ContextLength);
            var oldLogProbs = e.LogProbs.index_select(0, rows);
            var advantages = e.Advantages.index_select(0, rows);
            var (policyLosses, policyClipped) = PolicyGradient.ClippedPolicyLosses(logProbs, oldLogProbs, advantages, trainer._ppo.ClipRange, trainer._ppo.ClipRange);
            var (valueLosses, valueClipped) = PolicyGradient.ClippedValueLosses(values, e.Values.index_select(0, rows), e.Returns.index_select(0, rows), trainer._ppo.ClipRangeValue);
            var policyLoss = PolicyGradient.MaskedMean(policyLosses, responseMask);
            var valueLoss = PolicyGradient.MaskedMean(valueLosses, responseMask).Times(0.5);
            var loss = policyLoss.Plus(valueLoss.Times(trainer._ppo.VfCoef));

            var metrics = new Dictionary<string, double>(e.Metrics);
            using (no_grad())
            {
                var difference = logProbs - oldLogProbs;
                metrics["policy/approxkl_avg"] = PolicyGradient.MaskedMean(difference * difference, responseMask).item<float>() / 2;
                metrics["policy/clipfrac_avg"] = PolicyGradient.MaskedMean(policyClipped.to(ScalarType.Float32), responseMask).item<float>();
                metrics["policy/entropy_avg"] = PolicyGradient.MaskedMean(entropy, responseMask).item<float>();
                metrics["loss/policy_avg"] = policyLoss.item<float>();
                metrics["loss/value_avg"] = valueLoss.item<float>();
                metrics["val/clipfrac_avg"] = PolicyGradient.MaskedMean(valueClipped.to(ScalarType.Float32), responseMask).item<float>();
                metrics["val/ratio"] = PolicyGradient.MaskedMean(difference.exp(), responseMask).item<float>();
            }
            long tokens = (long)mask.sum().item<long>();
            return new BatchLoss(loss, tokens, metrics);
        }

        /// <summary>Samples rollout <paramref name="index"/>, scores it and computes its advantages, all without gradients.</summary>
        private Experience Collect(int index, Random sampler)
        {
            var ppo = trainer._ppo;
            var model = trainer._model;
            int rows = trainer.RolloutRows;
            var picked = Enumerable.Range(0, rows).Select(_ => sampler.Next(prompts.Count)).ToArray();
            var rollout = Rollout.Sample(model.Policy, trainer._tokenizer, picked.Select(i => prompts[i]).ToList(), picked.Select(i => promptIds[i]).ToList(),
                ppo.Sampling, seed: sampler.NextInt64());
            try
            {
                using var scope = NewDisposeScope();
                using var _ = no_grad();
                model.eval();
                var (logProbs, entropy) = Rollout.ResponseLogProbs(model.Policy, rollout.Ids, rollout.AttentionMask, rollout.Responses, rollout.ResponseMask,
                    rollout.ContextLength, ppo.Sampling.Temperature);
                var referenceLogProbs = trainer._reference.Run(reference => Rollout.ResponseLogProbs(reference, rollout.Ids, rollout.AttentionMask,
                    rollout.Responses, rollout.ResponseMask, rollout.ContextLength, ppo.Sampling.Temperature).LogProbs);
                var values = Rollout.Values(model.Value, rollout.Ids, rollout.AttentionMask, rollout.ResponseMask, rollout.ContextLength);
                var scores = rollout.Score(trainer._reward);
                if (ppo.MissingEosPenalty is { } penalty)
                    for (int i = 0; i < scores.Length; i++) if (!rollout.EndedWithEos[i]) scores[i] -= (float)penalty;

                var kl = MaskedKl(rollout, logProbs, referenceLogProbs, ppo.KlEstimator);
                var rewards = TokenRewards(rollout, kl, scores, _klCoef);
                if (ppo.WhitenRewards) rewards = PolicyGradient.MaskedWhiten(rewards, rollout.ResponseMask, shiftMean: false) * rollout.ResponseMask;
                var (advantages, returns) = PolicyGradient.Gae(rewards, values, ppo.Gamma, ppo.Lambda);
                advantages = PolicyGradient.MaskedWhiten(advantages, rollout.ResponseMask) * rollout.ResponseMask;

                double klSum = kl.sum(1).mean().item<float>();
                double nonScore = -_klCoef * klSum;
                double meanScore = scores.Average();
                var metrics = new Dictionary<string, double>
                {
                    ["objective/kl"] = klSum,
                    ["objective/entropy"] = entropy.sum(1).mean().item<float>(),
                    ["objective/non_score_reward"] = nonScore,
                    ["objective/rlhf_reward"] = meanScore + nonScore,
                    ["objective/scores"] = meanScore,
                    ["objective/kl_coef"] = _klCoef,
                    ["val/num_eos_tokens"] = rollout.EndedWithEos.Count(e => e),
                    ["val/mean_response_length"] = rollout.ResponseLengths.Average(),
                };
                double klCoef = ppo.AdaptiveKl?.Update(_klCoef, klSum, rows) ?? _klCoef;
                return new Experience(index, rollout, logProbs.DetachFromDisposeScope(), values.DetachFromDisposeScope(),
                    advantages.DetachFromDisposeScope(), returns.DetachFromDisposeScope(), klCoef, metrics);
            }
            catch
            {
                rollout.Dispose();
                throw;
            }
        }

        public override (IReadOnlyDictionary<string, Tensor> Tensors, JsonObject? Json)? TrainingState()
        {
            if (_experience is not { } e) return null;
            var r = e.Rollout;
            var tensors = new Dictionary<string, Tensor>
            {
                ["ids"] = r.Ids, ["attention_mask"] = r.AttentionMask, ["responses"] = r.Responses, ["response_mask"] = r.ResponseMask,
                ["logprobs"] = e.LogProbs, ["values"] = e.Values, ["advantages"] = e.Advantages, ["returns"] = e.Returns,
            };
            var metrics = new JsonObject();
            foreach (var (name, value) in e.Metrics) metrics[name] = value;
            var json = new JsonObject
            {
                ["rollout"] = e.Index, ["context_length"] = r.ContextLength, ["kl_coef"] = e.KlCoef,
                ["prompts"] = new JsonArray([.. r.Prompts.Select(p => (JsonNode?)p)]),
                ["texts"] = new JsonArray([.. r.Texts.Select(t => (JsonNode?)t)]),
                ["ended_with_eos"] = new JsonArray([.. r.EndedWithEos.Select(b => (JsonNode?)b)]),
                ["metrics"] = metrics,
            };
            return (tensors, json);
        }

        public override void RestoreTrainingState(IReadOnlyDictionary<string, Tensor> tensors, JsonObject? json)
        {
            if (json is null) throw new InvalidDataException("The checkpoint's PPO state has no description of its rollout.");
            Tensor Take(string name) => tensors.TryGetValue(name, out var t)
                ? t.to(trainer._model.Policy.parameters().First().device).clone().DetachFromDisposeScope()
                : throw new InvalidDataException($"The checkpoint's PPO state lacks '{name}'.");
            var responseMask = Take("response_mask");
            var lengths = responseMask.sum(1).to(ScalarType.Int64).cpu().data<long>().Select(l => (int)l).ToList();
            var rollout = Rollout.Restore(Take("ids"), Take("attention_mask"), Take("responses"), responseMask, json["context_length"]!.GetValue<int>(),
                json["prompts"]!.AsArray().Select(p => p!.GetValue<string>()).ToList(), json["texts"]!.AsArray().Select(p => p!.GetValue<string>()).ToList(),
                json["ended_with_eos"]!.AsArray().Select(p => p!.GetValue<bool>()).ToList(), lengths);
            var metrics = json["metrics"]!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<double>());
            _experience?.Dispose();
            _experience = new Experience(json["rollout"]!.GetValue<int>(), rollout, Take("logprobs"), Take("values"), Take("advantages"), Take("returns"),
                json["kl_coef"]!.GetValue<double>(), metrics);
            _klCoef = _experience.KlCoef;
        }

        public void Dispose() => _experience?.Dispose();
    }
}
