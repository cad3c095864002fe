using MLNetPeft.Architectures;
using MLNetPeft.Runtime;
using MLNetPeft.Tokenization;
using MLNetPeft.Training.RewardModeling;
using MLNetPeft.Tuners;
using static TorchSharp.torch;

namespace MLNetPeft.Training.Dpo;

/// <summary>
/// DPO's implicit reward, r(x, y) = β·(log π(y|x) − log π_ref(y|x)): the response's log-probability under a
/// DPO-tuned policy over its reference, summed over the response tokens and the eos that ends them (Rafailov et al.
/// 2023, "your language model is secretly a reward model"; RewardBench scores DPO models as reward models this way).
/// The reward DPO's loss trains, as an <see cref="IRewardFunction"/>, so PPO, GRPO and the pairwise evaluators take it
/// like a trained reward model. The term β·log Z(x) that DPO's derivation drops depends on the prompt alone: responses
/// to the same prompt compare exactly, scores of different prompts are not on one scale.
/// Responses are encoded as DPO trains on them: the prompt with the tokenizer's special tokens, the response without,
/// then eos; a row longer than <c>maxLength</c> loses the start of its prompt.
/// </summary>
public sealed class ImplicitReward : IRewardFunction
{
    private readonly CausalLanguageModel _policy;
    private readonly TextTokenizer _tokenizer;
    private readonly ReferenceModel _reference;
    private readonly double _beta;
    private readonly int _maxLength;
    private readonly int _batchSize;
    private readonly int _eos;
    private readonly object _lock = new();

    /// <param name="policy">The DPO-tuned model (with its adapter when <paramref name="adapter"/> is given).</param>
    /// <param name="tokenizer">The policy's tokenizer; it needs an eos token.</param>
    /// <param name="beta">DPO's β, the scale of the reward (the β the policy was tuned with).</param>
    /// <param name="adapter">The PEFT method applied to <paramref name="policy"/>: the reference is the policy with it disabled.</param>
    /// <param name="referenceModel">Otherwise: the model the policy was tuned from (a merged or fully tuned policy).</param>
    /// <param name="maxLength">The most tokens of prompt + response.</param>
    /// <param name="batchSize">Responses per forward pass.</param>
    public ImplicitReward(CausalLanguageModel policy, TextTokenizer tokenizer, double beta = 0.1, PeftModel? adapter = null,
        CausalLanguageModel? referenceModel = null, int maxLength = 512, int batchSize = 16)
    {
        _policy = policy ?? throw new ArgumentNullException(nameof(policy));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        if (!(beta > 0) || !double.IsFinite(beta)) throw new ArgumentOutOfRangeException(nameof(beta), beta, "must be a finite number > 0");
        if (maxLength < 2) throw new ArgumentOutOfRangeException(nameof(maxLength), maxLength, "must be at least 2");
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "must be at least 1");
        _eos = tokenizer.EosId ?? throw new ArgumentException("The tokenizer has no end-of-sequence token, which ends every scored response as in DPO.", nameof(tokenizer));
        _reference = new ReferenceModel("The implicit reward", policy, adapter, referenceModel);
        _beta = beta;
        _maxLength = maxLength;
        _batchSize = batchSize;
    }

    public float[] Score(IReadOnlyList<string> prompts, IReadOnlyList<string> responses)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        ArgumentNullException.ThrowIfNull(responses);
        if (prompts.Count != responses.Count) throw new ArgumentException($"{prompts.Count} prompts but {responses.Count} responses.", nameof(responses));
        var rows = prompts.Zip(responses, (p, r) => PreferencePairs.FitToLength(_tokenizer.Encode(p ?? ""),
            [.. _tokenizer.Encode(r ?? "", addSpecialTokens: false), _eos], _maxLength)).ToList();
        var scores = new float[rows.Count];
        lock (_lock)
        {
            bool wasTraining = _policy.training;
            try
            {
                for (int start = 0; start < rows.Count; start += _batchSize)
                {
                    using var scope = NewDisposeScope();
                    var batch = rows.Skip(start).Take(_batchSize).ToList();
                    var ids = batch.Select(r => (IReadOnlyList<int>)r.Ids).ToList();
                    var promptLengths = batch.Select(r => r.PromptLength).ToList();
                    string RowName(int b) => $"Response {start + b}";
                    var referenceNll = _reference.Run(model => DpoTrainer.ResponseNll(model, ids, promptLengths, RowName, nameof(responses)).Nll);
                    _policy.eval();
                    using var _ = no_grad();
                    var policyNll = DpoTrainer.ResponseNll(_policy, ids, promptLengths, RowName, nameof(responses)).Nll;
                    // β·(log π − log π_ref) = β·(nll_ref − nll)
                    var reward = (referenceNll - policyNll).Times(_beta).cpu().data<float>().ToArray();
                    reward.CopyTo(scores, start);
                }
            }
            finally
            {
                if (wasTraining) _policy.train();
            }
        }
        return scores;
    }
}
