using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.Tokenization;
using MLNetPeft.Training;
using MLNetPeft.Training.Grpo;
using MLNetPeft.Tuners;

namespace MLNetPeft.ML.Reinforcement;

/// <summary>
/// GRPO (TRL's <c>GRPOTrainer</c>, see <see cref="GrpoTrainer"/>) on a view with a prompt column and the columns its
/// rewards read (e.g. the expected answer): the policy is a copy of the model tuned by
/// <see cref="PeftMethodOptions.Method"/>, the rewards are summed with their weights, and a reference is kept only
/// when β &gt; 0. Returns a <see cref="Generation.TextGenerationTransformer"/>.
/// </summary>
public sealed class CausalLmGrpoEstimator : CausalLmRlEstimator<CausalLmGrpoOptions>
{
    internal CausalLmGrpoEstimator(IHostEnvironment env, CausalLanguageModel model, TextTokenizer tokenizer, CausalLmGrpoOptions options)
        : base(env, model, tokenizer, options) { }

    private protected override string MethodName => "GRPO";
    private protected override IReadOnlyList<RlReward> Rewards => Options.Rewards;

    private protected override TrainingResult Train(TuningRun run, RlPrompts prompts, IChannel ch)
    {
        var o = Options;
        using var reference = o.Grpo.Beta > 0 && run.Adapter is null ? run.LoadFrozenCopy() : null;
        var rewards = o.Rewards.Select(r => new WeightedReward(r.Name, r.Bind(prompts.ColumnsByPrompt), r.Weight)).ToList();
        var trainer = new GrpoTrainer(run.Model, Tokenizer, rewards, o.Training, o.Grpo, run.Adapter, reference, run.Adapter as ITrainingStepHook);
        return trainer.Train(prompts.Prompts, o.Progress, o.CancellationToken);
    }
}

/// <summary>Catalog entry point: <c>mlContext.Transforms.Text.TrainGrpo(...)</c>.</summary>
public static class CausalLmGrpoCatalog
{
    /// <summary>Tunes <paramref name="model"/> by GRPO against the options' rewards on the prompt column and adds a generated-text column.</summary>
    public static CausalLmGrpoEstimator TrainGrpo(this TransformsCatalog.TextTransforms catalog, CausalLanguageModel model, TextTokenizer tokenizer, CausalLmGrpoOptions options) =>
        new(CatalogUtils.GetEnvironment(catalog), model, tokenizer, options ?? throw new ArgumentNullException(nameof(options)));
}
