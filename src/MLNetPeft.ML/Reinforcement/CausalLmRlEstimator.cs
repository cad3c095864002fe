using Microsoft.ML;
using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Tokenization;
using MLNetPeft.Training;

namespace MLNetPeft.ML.Reinforcement;

/// <summary>
/// What the RL estimators share: a view with a prompt column (and the text columns their rewards read), the checks
/// made at Fit, and the tuning flow of every causal-LM estimator (a copy of the model trains; the caller's stays as
/// it was). They return a <see cref="TextGenerationTransformer"/> that generates from the prompt column and saves and
/// loads as the fine-tuning estimator's does.
/// </summary>
public abstract class CausalLmRlEstimator<TOptions> : IEstimator<TextGenerationTransformer> where TOptions : CausalLmTuningOptions
{
    private protected readonly IHostEnvironment Env;
    private protected readonly CausalLanguageModel BaseModel;
    private protected readonly TextTokenizer Tokenizer;
    private protected readonly TOptions Options;

    private protected CausalLmRlEstimator(IHostEnvironment env, CausalLanguageModel model, TextTokenizer tokenizer, TOptions options)
    {
        Env = env;
        BaseModel = model ?? throw new ArgumentNullException(nameof(model));
        Tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        Options = options ?? throw new ArgumentNullException(nameof(options));
        options.Validate();
        if (tokenizer.EosId is null) throw new ArgumentException($"The tokenizer has no end-of-sequence token, which {MethodName} needs to end the responses it samples.", nameof(tokenizer));
    }

    private protected abstract string MethodName { get; }
    private protected abstract IReadOnlyList<RlReward> Rewards { get; }

    /// <summary>Trains the run's model on the prompts (its rewards bound to the prompts' columns).</summary>
    private protected abstract TrainingResult Train(TuningRun run, RlPrompts prompts, IChannel ch);

    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        RlPrompts.Check(inputSchema, Options.PromptColumnName, Rewards, Env);
        return TextGenerationTransformer.OutputShape(Env, inputSchema, [Options.PromptColumnName], Options.OutputColumnName, scored: false);
    }

    public TextGenerationTransformer Fit(IDataView input)
    {
        var o = Options;
        RlPrompts.Check(input.Schema, o.PromptColumnName, Rewards, Env);
        ModelFiles.RequireCheckpointFolder(BaseModel);
        using var ch = Env.Start(MethodName);
        var prompts = RlPrompts.Read(input, o.PromptColumnName, Rewards, o.EmptyRows, ch);
        ch.Info($"{MethodName} ({o.Method}) on {prompts.Prompts.Count} prompts ({prompts.ColumnsByPrompt.Count} distinct), {o.Training.MaxSteps} steps; " +
            $"rewards: {string.Join(", ", Rewards.Select(r => $"{r.Name} × {r.Weight}"))}.");
        return CausalLmTuning.TuneCopy(Env, BaseModel, Tokenizer, o, ch, o.PromptColumnName, scoredResponseColumn: null, run => Train(run, prompts, ch));
    }
}
