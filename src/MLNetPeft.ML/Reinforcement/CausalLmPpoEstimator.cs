using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Persistence;
using MLNetPeft.ML.RewardModeling;
using MLNetPeft.Tokenization;
using MLNetPeft.Training;
using MLNetPeft.Training.Ppo;
using MLNetPeft.Tuners;

namespace MLNetPeft.ML.Reinforcement;

/// <summary>
/// RLHF with PPO (TRL's <c>PPOTrainer</c>, see <see cref="PpoTrainer"/>) on a view with a prompt column: the policy is a
/// copy of the model tuned by <see cref="PeftMethodOptions.Method"/> (LoRA by default), the reference the copy with
/// its adapter disabled (or a frozen copy for full fine-tuning), the critic a separate model with a scalar head
/// (<see cref="CausalLmPpoOptions.ValueModel"/>). Returns a <see cref="Generation.TextGenerationTransformer"/>.
/// </summary>
public sealed class CausalLmPpoEstimator : CausalLmRlEstimator<CausalLmPpoOptions>
{
    internal CausalLmPpoEstimator(IHostEnvironment env, CausalLanguageModel model, TextTokenizer tokenizer, CausalLmPpoOptions options)
        : base(env, model, tokenizer, options)
    {
        if (options.ValueModel == ValueModelInit.FromRewardModel)
            RewardBackbone(options.Reward!, model);   // refuse at construction what cannot be a critic
    }

    private protected override string MethodName => "PPO";
    private protected override IReadOnlyList<RlReward> Rewards => [Options.Reward!];

    private protected override TrainingResult Train(TuningRun run, RlPrompts prompts, IChannel ch)
    {
        var o = Options;
        using var reference = run.Adapter is null ? run.LoadFrozenCopy() : null;
        // From the policy: a copy of its start under a new head (disposed after the head, which shares its modules).
        using var valueBackbone = o.ValueModel == ValueModelInit.FromPolicy ? run.LoadFrozenCopy() : null;
        using var value = valueBackbone is not null
            ? new CausalLmForSequenceClassification(valueBackbone, numLabels: 1, padTokenId: Tokenizer.PadId ?? Tokenizer.EosId, seed: o.Seed)
            : CopyOfRewardModel(RewardBackbone(o.Reward!, run.Model), run);
        foreach (var p in value.parameters()) p.requires_grad = true;
        ch.Info($"PPO critic: {(o.ValueModel == ValueModelInit.FromRewardModel ? "a copy of the reward model" : "a copy of the policy's starting model with a new head")}, " +
            $"{value.ParameterCount():N0} parameters, all trained.");
        var trainer = new PpoTrainer(run.Model, value, Tokenizer, o.Reward!.Bind(prompts.ColumnsByPrompt), o.Training, o.Ppo, run.Adapter, reference, run.Adapter as ITrainingStepHook);
        return trainer.Train(prompts.Prompts, o.Progress, o.CancellationToken);
    }

    /// <summary>The reward model a critic can start from: a causal LM's sequence classifier with the policy's vocabulary.</summary>
    private static CausalLmForSequenceClassification RewardBackbone(RlReward reward, CausalLanguageModel policy)
    {
        if (reward.Function is not RewardModelTransformer transformer)
            throw new ArgumentException("ValueModel = FromRewardModel needs the reward to be a reward-model transformer (TrainRewardModel's); use FromPolicy for other rewards.", "options");
        if (transformer.Model is not CausalLmForSequenceClassification causal)
            throw new ArgumentException($"ValueModel = FromRewardModel needs a reward model on a causal LM; this one is a {transformer.Model.GetType().Name}, whose tokens are not the policy's. Use FromPolicy.", "options");
        if (causal.Config.VocabSize != policy.Config.VocabSize)
            throw new ArgumentException($"ValueModel = FromRewardModel: the reward model's vocabulary ({causal.Config.VocabSize}) is not the policy's ({policy.Config.VocabSize}). Use FromPolicy.", "options");
        return causal;
    }

    /// <summary>A trainable copy of the reward model's weights (backbone and head) through an HF checkpoint folder.</summary>
    private static CausalLmForSequenceClassification CopyOfRewardModel(CausalLmForSequenceClassification rewardModel, TuningRun run) =>
        ModelFiles.WithTempFolder(folder =>
        {
            rewardModel.SavePretrained(folder);
            var copy = (CausalLmForSequenceClassification)PretrainedModels.LoadSequenceClassifier(folder, ModelLoadOptions.Like(run.Model));
            if (copy.LoadReport is { UnusedCheckpointKeys.Count: > 0 } report)
            {
                copy.Dispose();
                throw new ArgumentException($"ValueModel = FromRewardModel: the reward model keeps a PEFT adapter apart ({report.UnusedCheckpointKeys[0]}, …), which a critic copy cannot take. " +
                    "Fit the reward model with MergeAdapter = true, or use FromPolicy.", "options");
            }
            return copy;
        });
}

/// <summary>Catalog entry point: <c>mlContext.Transforms.Text.TrainPpo(...)</c>.</summary>
public static class CausalLmPpoCatalog
{
    /// <summary>Tunes <paramref name="model"/> by PPO against the options' reward on the prompt column and adds a generated-text column.</summary>
    public static CausalLmPpoEstimator TrainPpo(this TransformsCatalog.TextTransforms catalog, CausalLanguageModel model, TextTokenizer tokenizer, CausalLmPpoOptions options) =>
        new(CatalogUtils.GetEnvironment(catalog), model, tokenizer, options ?? throw new ArgumentNullException(nameof(options)));
}
