using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Preferences;
using MLNetPeft.ML.RewardModeling;
using MLNetPeft.Tokenization;
using MLNetPeft.Training;
using MLNetPeft.Training.Dpo;
using MLNetPeft.Training.RewardModeling;

namespace MLNetPeft.ML.Evaluation;

/// <summary>Evaluators of preference learning over views with prompt, chosen and rejected columns.</summary>
public static class PreferenceEvaluation
{
    /// <summary>
    /// Pairwise accuracy (chosen scored strictly higher), mean margin, loss −mean log σ(chosen − rejected) and reward
    /// statistics of a reward model over the pairs of <paramref name="data"/> (its chosen/rejected columns as the transformer names them).
    /// </summary>
    public static RewardMetrics Evaluate(this RewardModelTransformer rewardModel, IDataView data)
    {
        ArgumentNullException.ThrowIfNull(rewardModel);
        ArgumentNullException.ThrowIfNull(data);
        var scored = rewardModel.Transform(data);
        if (scored.Schema.GetColumnOrNull(rewardModel.ChosenScoreColumnName) is null)
            throw new ArgumentException($"The view needs the text columns '{rewardModel.ChosenColumnName}' and '{rewardModel.RejectedColumnName}' to evaluate preferences.", nameof(data));
        return RewardMetrics.Of(scored.GetColumn<float>(rewardModel.ChosenScoreColumnName).ToList(), scored.GetColumn<float>(rewardModel.RejectedScoreColumnName).ToList());
    }

    /// <summary>
    /// The same pairwise figures for any reward (a reward model, DPO's implicit reward, a rule) over the prompt, chosen
    /// and rejected text columns of <paramref name="data"/>: each response is scored with its prompt.
    /// </summary>
    public static RewardMetrics EvaluatePreferences(this IRewardFunction reward, IDataView data,
        string promptColumnName = "Prompt", string chosenColumnName = "Chosen", string rejectedColumnName = "Rejected")
    {
        ArgumentNullException.ThrowIfNull(reward);
        ArgumentNullException.ThrowIfNull(data);
        new PreferenceColumns(promptColumnName, chosenColumnName, rejectedColumnName).Check(data.Schema, new MLContext());
        List<string> Texts(string column) => data.GetColumn<string>(column).Select(t => t ?? "").ToList();
        var prompts = Texts(promptColumnName);
        if (prompts.Count == 0) throw new ArgumentException("The view has no rows.", nameof(data));
        return RewardMetrics.Of(reward.Score(prompts, Texts(chosenColumnName)), reward.Score(prompts, Texts(rejectedColumnName)));
    }

    /// <summary>
    /// DPO's implicit-reward figures of a tuned model against <paramref name="reference"/> (the model it started from):
    /// the share of pairs whose implicit reward β·(log π − log π_ref) is higher for chosen, the margins, and the loss.
    /// Responses are encoded as the DPO estimator does (the prompt with special tokens, each response followed by eos).
    /// </summary>
    public static DpoMetrics EvaluateDpo(this TextGenerationTransformer tuned, CausalLanguageModel reference, TextTokenizer tokenizer, IDataView data,
        string promptColumnName = "Prompt", string chosenColumnName = "Chosen", string rejectedColumnName = "Rejected", DpoOptions? dpo = null, int maxLength = 128)
    {
        ArgumentNullException.ThrowIfNull(tuned);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(data);
        var env = new MLContext();
        var columns = new PreferenceColumns(promptColumnName, chosenColumnName, rejectedColumnName);
        columns.Check(data.Schema, env);
        int eos = tokenizer.EosId ?? throw new ArgumentException("The tokenizer has no end-of-sequence token, which DPO appends to every response.", nameof(tokenizer));
        using var ch = ((IHostEnvironment)env).Start("DPO evaluation");
        var pairs = PreferenceData.Read(data, columns, tokenizer, eos, maxLength, BadRowHandling.SkipOrTruncate, BadRowHandling.SkipOrTruncate, "evaluation", ch);
        return new DpoTrainer(tuned.Model, new TrainingOptions(), dpo, referenceModel: reference).Evaluate(pairs);
    }
}
