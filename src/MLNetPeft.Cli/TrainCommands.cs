using MLNetPeft.Display;
using System.CommandLine;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.Generation;
using MLNetPeft.ML.Classification;
using MLNetPeft.ML.Dpo;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Reinforcement;
using MLNetPeft.ML.RewardModeling;
using MLNetPeft.Training;

namespace MLNetPeft.Cli;

/// <summary><c>train sft|dpo|reward|classify</c>: the estimators of the library on a data file, saved as a model zip.</summary>
internal static class TrainCommands
{
    public sealed class SftRow { public string Prompt { get; set; } = ""; public string Response { get; set; } = ""; }
    public sealed class PairRow { public string Prompt { get; set; } = ""; public string Chosen { get; set; } = ""; public string Rejected { get; set; } = ""; }
    public sealed class LabelRow { public string Text { get; set; } = ""; public string Label { get; set; } = ""; }
    public sealed class PromptRow { public string Prompt { get; set; } = ""; public string Answer { get; set; } = ""; }

    /// <summary>The options every training command has.</summary>
    private sealed class Common
    {
        public readonly Option<string> Data = new("--data") { Description = "Training rows: a .jsonl, .csv or .tsv file.", Required = true };
        public readonly Option<string> Output = new("--output", "-o") { Description = "The model zip to write (mlContext.Model.Load reads it).", Required = true };
        public readonly Option<string> Base = new("--base") { Description = "The model to tune: 'bundled' (the bundled base model) or an HF checkpoint folder.", DefaultValueFactory = _ => Models.Bundled };
        public readonly Option<FineTuningMethod> Method = new("--method") { Description = "How parameters are adapted (Lora, Full, QLora, AdaLora, Ia3, ...).", DefaultValueFactory = _ => FineTuningMethod.Lora };
        public readonly Option<int> Steps = new("--steps") { Description = "Optimizer steps.", DefaultValueFactory = _ => 200 };
        public readonly Option<int> BatchSize = new("--batch-size") { Description = "Rows (or pairs) per optimizer step.", DefaultValueFactory = _ => 8 };
        public readonly Option<double> LearningRate = new("--learning-rate", "--lr") { Description = "Peak learning rate (AdamW, linear warm-up, cosine decay).", DefaultValueFactory = _ => 1e-3 };
        public readonly Option<int> MaxLength = new("--max-length") { Description = "Longest prompt + response in tokens; longer rows are cut.", DefaultValueFactory = _ => 128 };
        public readonly Option<int> LoraR = new("--lora-r") { Description = "LoRA rank.", DefaultValueFactory = _ => 8 };
        public readonly Option<int> LoraAlpha = new("--lora-alpha") { Description = "LoRA alpha (the update is scaled by alpha / r).", DefaultValueFactory = _ => 16 };
        public readonly Option<long> Seed = new("--seed") { Description = "Seed of batch order and initialisation: the same seed gives the same model.", DefaultValueFactory = _ => 1 };
        public readonly Option<string?> Validation = new("--validation-data") { Description = "Rows (same columns) whose loss is measured every tenth of the run and plotted." };
        public readonly Option<string?> Checkpoints = new("--checkpoints") { Description = "Folder for checkpoints; a run stopped with Ctrl+C resumes from it." };
        public readonly Option<string?> Plot = new("--plot") { Description = "PNG of the loss curves; default: the output path with .loss.png." };
        public readonly Option<bool> NoPlot = new("--no-plot") { Description = "Do not write the loss plot." };

        public void AddTo(Command command)
        {
            foreach (var option in new Option[] { Data, Validation, Output, Base, Method, Steps, BatchSize, LearningRate, MaxLength, LoraR, LoraAlpha, Seed, Checkpoints, Plot, NoPlot })
                command.Options.Add(option);
        }

        public TrainingOptions Training(ParseResult p) => new()
        {
            MaxSteps = Positive(p, Steps), BatchSize = Positive(p, BatchSize), LearningRate = p.GetValue(LearningRate),
            WarmupSteps = Math.Min(10, Math.Max(1, p.GetValue(Steps) / 10)), WeightDecay = 0, Seed = p.GetValue(Seed), CheckpointFolder = p.GetValue(Checkpoints),
            EvalInterval = p.GetValue(Validation) is null ? 0 : Math.Max(1, p.GetValue(Steps) / 10),
        };

        /// <summary>The validation file's rows in the training rows' shape, or null.</summary>
        public IDataView? ValidationView<TRow>(MLContext ml, ParseResult p, Func<DataFile, IEnumerable<TRow>> rows) where TRow : class =>
            p.GetValue(Validation) is { } path ? ml.Data.LoadFromEnumerable(rows(DataFile.Read(path))) : null;

        public void Configure(PeftMethodOptions options, ParseResult p)
        {
            options.Method = p.GetValue(Method);
            options.Lora = new() { R = Positive(p, LoraR), LoraAlpha = p.GetValue(LoraAlpha), TargetModules = [Tuners.Lora.LoraConfig.AllLinear] };
        }

        public string? PlotPath(ParseResult p) => p.GetValue(NoPlot) ? null : p.GetValue(Plot) ?? Path.ChangeExtension(p.GetValue(Output)!, ".loss.png");

        private static int Positive(ParseResult p, Option<int> option)
        {
            int value = p.GetValue(option);
            return value >= 1 ? value : throw new CliException($"{option.Name} is {value}; it must be at least 1.");
        }
    }

    public static Command Create(CommandContext context)
    {
        var train = new Command("train", "Train a model on a data file and save it as a model zip.");
        train.Subcommands.Add(Sft(context));
        train.Subcommands.Add(Dpo(context));
        train.Subcommands.Add(Reward(context));
        train.Subcommands.Add(Classify(context));
        train.Subcommands.Add(Reinforcement(context, ppo: true));
        train.Subcommands.Add(Reinforcement(context, ppo: false));
        return train;
    }

    private static Option<string> ColumnOption(string name, string column, string what) =>
        new($"--{name}-column") { Description = $"The column with {what}.", DefaultValueFactory = _ => column };

    private static Command Sft(CommandContext context)
    {
        var command = new Command("sft", "Supervised fine-tuning of a causal LM on prompt/response rows (like `trl sft`).");
        var common = new Common();
        common.AddTo(command);
        var prompt = ColumnOption("prompt", "Prompt", "the prompts");
        var response = ColumnOption("response", "Response", "the responses to learn");
        var maxNewTokens = new Option<int>("--max-new-tokens") { Description = "Tokens the saved model generates at most per row.", DefaultValueFactory = _ => 64 };
        command.Options.Add(prompt);
        command.Options.Add(response);
        command.Options.Add(maxNewTokens);
        command.SetAction((p, ct) => Run(context, common, p, "SFT", ct, (ml, file, progress) =>
        {
            IEnumerable<SftRow> Rows(DataFile f) => f.Column(p.GetValue(prompt)!, "--prompt-column").Zip(f.Column(p.GetValue(response)!, "--response-column"))
                .Select(x => new SftRow { Prompt = x.First, Response = x.Second });
            var data = ml.Data.LoadFromEnumerable(Rows(file));
            var (model, tokenizer) = Models.LoadBase(p.GetValue(common.Base)!);
            var options = new CausalLmFineTuningOptions
            {
                Training = common.Training(p), MaxLength = p.GetValue(common.MaxLength), Seed = p.GetValue(common.Seed),
                Generation = new GenerationOptions { MaxNewTokens = p.GetValue(maxNewTokens), StopStrings = ["\n"] }, Progress = progress, CancellationToken = ct,
                ValidationData = common.ValidationView(ml, p, Rows),
            };
            common.Configure(options, p);
            return (ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, options).Fit(data), data.Schema, model);
        }));
        return command;
    }

    private static IEnumerable<PairRow> Pairs(DataFile file, ParseResult p, Option<string> prompt, Option<string> chosen, Option<string> rejected) =>
        file.Column(p.GetValue(prompt)!, "--prompt-column").Zip(file.Column(p.GetValue(chosen)!, "--chosen-column"), file.Column(p.GetValue(rejected)!, "--rejected-column"))
            .Select(x => new PairRow { Prompt = x.First, Chosen = x.Second, Rejected = x.Third });

    private static Command Dpo(CommandContext context)
    {
        var command = new Command("dpo", "Direct preference optimisation on prompt/chosen/rejected rows (like `trl dpo`).");
        var common = new Common();
        common.AddTo(command);
        var (prompt, chosen, rejected) = (ColumnOption("prompt", "Prompt", "the prompts"), ColumnOption("chosen", "Chosen", "the preferred responses"),
            ColumnOption("rejected", "Rejected", "the dispreferred responses"));
        var beta = new Option<double>("--beta") { Description = "DPO's β: how far the policy may move from the reference.", DefaultValueFactory = _ => 0.1 };
        foreach (var option in new Option[] { prompt, chosen, rejected, beta }) command.Options.Add(option);
        command.SetAction((p, ct) => Run(context, common, p, "DPO", ct, (ml, file, progress) =>
        {
            var data = ml.Data.LoadFromEnumerable(Pairs(file, p, prompt, chosen, rejected));
            var (model, tokenizer) = Models.LoadBase(p.GetValue(common.Base)!);
            var options = new CausalLmDpoOptions
            {
                Training = common.Training(p), MaxLength = p.GetValue(common.MaxLength), Seed = p.GetValue(common.Seed), Progress = progress, CancellationToken = ct,
                ValidationData = common.ValidationView(ml, p, f => Pairs(f, p, prompt, chosen, rejected)),
            };
            options.Dpo.Beta = p.GetValue(beta);
            common.Configure(options, p);
            return (ml.Transforms.Text.TrainDpo(model, tokenizer, options).Fit(data), data.Schema, model);
        }));
        return command;
    }

    private static Command Reward(CommandContext context)
    {
        var command = new Command("reward", "A reward model (scalar head on a causal LM) trained on prompt/chosen/rejected pairs, as TRL's RewardTrainer.");
        var common = new Common();
        common.AddTo(command);
        var (prompt, chosen, rejected) = (ColumnOption("prompt", "Prompt", "the prompts"), ColumnOption("chosen", "Chosen", "the preferred responses"),
            ColumnOption("rejected", "Rejected", "the dispreferred responses"));
        foreach (var option in new Option[] { prompt, chosen, rejected }) command.Options.Add(option);
        command.SetAction((p, ct) => Run(context, common, p, "reward model", ct, (ml, file, progress) =>
        {
            var data = ml.Data.LoadFromEnumerable(Pairs(file, p, prompt, chosen, rejected));
            var (model, tokenizer) = Models.LoadBase(p.GetValue(common.Base)!);
            var options = new RewardModelOptions { Training = common.Training(p), MaxLength = p.GetValue(common.MaxLength), Seed = p.GetValue(common.Seed), Progress = progress, CancellationToken = ct };
            common.Configure(options, p);
            return (ml.Transforms.Text.TrainRewardModel(model, tokenizer, options).Fit(data), data.Schema, model);
        }));
        return command;
    }

    private static Command Classify(CommandContext context)
    {
        var command = new Command("classify", "A text classifier: LoRA on the bundled all-MiniLM-L6-v2 encoder (ML.NET's TextClassification, with PEFT).");
        var common = new Common();
        common.AddTo(command);
        var (text, label) = (ColumnOption("text", "Text", "the texts"), ColumnOption("label", "Label", "the class names"));
        var epochs = new Option<int>("--epochs") { Description = "Passes over the data (the classifier trains by epochs, not --steps).", DefaultValueFactory = _ => 4 };
        foreach (var option in new Option[] { text, label, epochs }) command.Options.Add(option);
        command.SetAction((p, ct) => Run(context, common, p, "text classifier", ct, (ml, file, progress) =>
        {
            var data = ml.Data.LoadFromEnumerable(file.Column(p.GetValue(text)!, "--text-column").Zip(file.Column(p.GetValue(label)!, "--label-column"))
                .Select(x => new LabelRow { Text = x.First, Label = x.Second }));
            var options = new PeftTextClassificationOptions
            {
                LabelColumnName = "Label", Sentence1ColumnName = "Text", BatchSize = p.GetValue(common.BatchSize), MaxEpochs = p.GetValue(epochs),
                LearningRate = p.GetResult(common.LearningRate) is null ? null : p.GetValue(common.LearningRate), MaxSequenceLength = p.GetValue(common.MaxLength),
                Seed = p.GetValue(common.Seed), Progress = progress, CancellationToken = ct,
            };
            common.Configure(options, p);
            options.Lora = new() { R = p.GetValue(common.LoraR), LoraAlpha = p.GetValue(common.LoraAlpha), TargetModules = ["query", "value"] };
            var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
                .Append(ml.MulticlassClassification.Trainers.PeftTextClassification(options))
                .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
            return (pipeline.Fit(data), data.Schema, null);
        }));
        return command;
    }

    private static Command Reinforcement(CommandContext context, bool ppo)
    {
        var command = new Command(ppo ? "ppo" : "grpo", ppo
            ? "RLHF with PPO (GAE, KL penalty to the reference) on prompts, scored by a reward model zip (from `train reward`), as TRL's PPOTrainer."
            : "GRPO on prompts: group-relative advantages, scored by a reward model zip and/or a rule (the response starts with the row's answer).");
        var common = new Common();
        common.AddTo(command);
        var prompt = ColumnOption("prompt", "Prompt", "the prompts");
        var rewardModel = new Option<string?>("--reward-model") { Description = "A reward model zip written by `train reward`" + (ppo ? " (required)." : ".") };
        var answer = new Option<string?>("--answer-column") { Description = "GRPO: the column with each prompt's expected answer; reward 1 when the response starts with it." };
        var maxNewTokens = new Option<int>("--max-new-tokens") { Description = "Tokens sampled at most per response.", DefaultValueFactory = _ => 32 };
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature of the rollouts.", DefaultValueFactory = _ => ppo ? 0.7 : 1.0 };
        var generations = new Option<int>("--generations") { Description = "GRPO: completions per prompt (--batch-size counts completions).", DefaultValueFactory = _ => 8 };
        var stop = new Option<string[]>("--stop") { Description = "A stop string of the rollouts (repeat for several)." };
        foreach (var option in ppo ? new Option[] { prompt, rewardModel, maxNewTokens, temperature, stop } : [prompt, rewardModel, answer, maxNewTokens, temperature, generations, stop])
            command.Options.Add(option);
        command.SetAction((p, ct) => Run(context, common, p, ppo ? "PPO policy" : "GRPO policy", ct, (ml, file, progress) =>
        {
            string? answerColumn = ppo ? null : p.GetValue(answer);
            var prompts = file.Column(p.GetValue(prompt)!, "--prompt-column");
            var answers = answerColumn is null ? prompts.Select(_ => "").ToArray() : file.Column(answerColumn, "--answer-column");
            var data = ml.Data.LoadFromEnumerable(prompts.Zip(answers).Select(x => new PromptRow { Prompt = x.First, Answer = x.Second }));
            var rewards = new List<MLNetPeft.ML.Reinforcement.RlReward>();
            ITransformer? rewardZip = null;
            if (p.GetValue(rewardModel) is { } path)
            {
                rewardZip = Models.Load(ml, path, out _);
                var scorer = ML.TransformerSearch.FindTransformer<RewardModelTransformer>(rewardZip) ?? throw new CliException($"--reward-model '{path}' is not a reward model.");
                rewards.Add(MLNetPeft.ML.Reinforcement.RlReward.From(scorer, "reward_model"));
            }
            if (answerColumn is not null)
                rewards.Add(MLNetPeft.ML.Reinforcement.RlReward.FromRow((_, response, row) => response.TrimStart().StartsWith(row["Answer"].Trim(), StringComparison.Ordinal) ? 1f : 0f,
                    ["Answer"], "answer"));
            if (rewards.Count == 0) throw new CliException(ppo ? "PPO needs --reward-model." : "GRPO needs --reward-model, --answer-column or both.");
            var sampling = new Training.Reinforcement.SamplingOptions { Temperature = p.GetValue(temperature), MaxNewTokens = p.GetValue(maxNewTokens), StopStrings = p.GetValue(stop) ?? [] };
            var (model, tokenizer) = Models.LoadBase(p.GetValue(common.Base)!);
            try
            {
                ITransformer tuned;
                if (ppo)
                {
                    var options = new MLNetPeft.ML.Reinforcement.CausalLmPpoOptions
                    {
                        Reward = rewards[0], Training = common.Training(p), MaxLength = p.GetValue(common.MaxLength), Seed = p.GetValue(common.Seed),
                        Progress = progress, CancellationToken = ct, Ppo = new Training.Ppo.PpoOptions { Sampling = sampling },
                    };
                    common.Configure(options, p);
                    tuned = ml.Transforms.Text.TrainPpo(model, tokenizer, options).Fit(data);
                }
                else
                {
                    var options = new MLNetPeft.ML.Reinforcement.CausalLmGrpoOptions
                    {
                        Rewards = rewards, Training = common.Training(p), MaxLength = p.GetValue(common.MaxLength), Seed = p.GetValue(common.Seed),
                        Progress = progress, CancellationToken = ct, Grpo = new Training.Grpo.GrpoOptions { NumGenerations = p.GetValue(generations), Sampling = sampling },
                    };
                    common.Configure(options, p);
                    tuned = ml.Transforms.Text.TrainGrpo(model, tokenizer, options).Fit(data);
                }
                return (tuned, data.Schema, model);
            }
            finally { (rewardZip as IDisposable)?.Dispose(); }
        }));
        return command;
    }

    /// <summary>The flow every training command shares: read, fit with the progress display, save, plot, report.</summary>
    private static Task<int> Run(CommandContext context, Common common, ParseResult p, string what, CancellationToken ct,
        Func<MLContext, DataFile, IProgress<TrainingProgress>, (ITransformer Model, DataViewSchema Schema, IDisposable? Base)> fit)
    {
        var file = DataFile.Read(p.GetValue(common.Data)!);
        var ml = new MLContext(seed: (int)p.GetValue(common.Seed));
        var display = new TrainingDisplay(p.GetValue(common.Steps), common.Training(p).EvalInterval, context.Console);
        var (model, schema, baseModel) = display.Run(progress => fit(ml, file, progress));
        try
        {
            string output = p.GetValue(common.Output)!;
            Models.Save(ml, model, schema, output);
            context.Output.WriteLine($"Trained the {what} on {file.Rows.Count} rows of {file.Path}: loss {display.Losses.FirstOrDefault().Loss:F4} -> " +
                $"{display.Losses.LastOrDefault().Loss:F4} over {display.Losses.Count} steps; saved {output}.");
            if (common.PlotPath(p) is { } plot)
            {
                display.SavePlot(plot, $"{what}: {Path.GetFileName(output)}");
                context.Output.WriteLine($"Loss curves: {plot}");
            }
        }
        finally
        {
            (model as IDisposable)?.Dispose();
            baseModel?.Dispose();
        }
        return Task.FromResult(0);
    }
}
