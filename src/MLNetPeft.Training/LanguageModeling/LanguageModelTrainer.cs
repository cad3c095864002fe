using MLNetPeft.Runtime;
using System.Diagnostics;
using System.Text.Json;
using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using MLNetPeft.Checkpoints;
using MLNetPeft.Tuners;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Training.LanguageModeling;

/// <summary>
/// Next-token training of a <see cref="CausalLanguageModel"/> (pretraining, continued pretraining, fine-tuning):
/// AdamW, warm-up then cosine decay, gradient clipping and accumulation, optional bf16, periodic evaluation and
/// checkpoints that a later run resumes from exactly. Each step's batch and dropout are derived from
/// (seed, step), so a run stopped at step k and resumed ends with the same weights as one that never stopped.
/// </summary>
public sealed class LanguageModelTrainer
{
    private const string OptimizerFile = "optimizer.safetensors";
    private const string StateFile = "trainer_state.json";
    private const string MethodStateFile = "method_state.safetensors";

    private readonly CausalLanguageModel _model;
    private readonly TrainingOptions _options;
    private readonly ITrainingStepHook? _hook;

    /// <param name="model">The model to train (its parameters that require grad).</param>
    /// <param name="options">The training loop's settings.</param>
    /// <param name="hook">A tuning method that takes part in each step (AdaLoRA); its own training state is part of checkpoints.</param>
    public LanguageModelTrainer(CausalLanguageModel model, TrainingOptions options, ITrainingStepHook? hook = null)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _hook = hook;
        options.Validate();
    }

    /// <summary>Trains on <paramref name="train"/>, evaluating on <paramref name="validation"/> when given.</summary>
    /// <exception cref="TrainingDivergedException">The loss or gradient norm became NaN or infinite.</exception>
    /// <exception cref="OperationCanceledException">Cancelled; a checkpoint of the last completed step was written first.</exception>
    public TrainingResult Train(TokenBlocks train, TokenBlocks? validation = null, IProgress<TrainingProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(train);
        var o = _options;
        if (train.Count < o.BatchSize)
            throw new ArgumentException($"The training data has {train.Count} blocks, fewer than BatchSize = {o.BatchSize}.", nameof(train));
        using var scope = NewDisposeScope();   // see TensorLifetime: nothing of a run is left to the finalizer
        if (o.UseBf16) _model.to(ScalarType.BFloat16);
        _model.train();
        var trainable = _model.named_parameters().Where(p => p.parameter.requires_grad).ToList();
        using var optimizer = new AdamW(trainable, o.Beta1, o.Beta2, o.Epsilon, o.WeightDecay);
        var schedule = new LearningRateSchedule(o.LearningRate, o.WarmupSteps, o.MaxSteps, o.MinLearningRate ?? o.LearningRate / 10);

        var state = new TrainerState
        {
            Seed = o.Seed, BatchSize = o.BatchSize, GradientAccumulationSteps = o.GradientAccumulationSteps,
            Fingerprint = o.CheckpointFolder is null ? null : RunFingerprint.Of(_model, trainable.Select(p => p.name), train),
        };
        string? lastCheckpoint = null;
        if (o.CheckpointFolder is { } folder)
        {
            if (o.Resume && LatestCheckpoint(folder) is { } latest)
            {
                state = Restore(latest, optimizer, state.Fingerprint!);
                lastCheckpoint = latest;
            }
            else if (!o.Resume)
            {
                // A run that starts over owns its folder: older checkpoints would otherwise be taken for its own.
                foreach (var old in Checkpoints(folder)) Directory.Delete(old, recursive: true);
            }
        }

        var clock = Stopwatch.StartNew();
        int startStep = state.Step;
        long tokensPerStep = (long)o.BatchSize * o.GradientAccumulationSteps * train.BlockSize;
        double? validationLoss = state.ValidationHistory.Count > 0 ? state.ValidationHistory[^1].Loss : null;
        while (state.Step < o.MaxSteps)
        {
            if (cancellationToken.IsCancellationRequested)
            {
                if (o.CheckpointFolder is not null) lastCheckpoint = SaveCheckpoint(state, optimizer);
                throw new OperationCanceledException($"Training was cancelled after step {state.Step}" +
                    (lastCheckpoint is null ? "." : $"; the checkpoint '{lastCheckpoint}' holds it."), cancellationToken);
            }
            int step = state.Step;
            double lr = schedule.At(step);
            double loss = TrainStep(train, optimizer, trainable, step, lr, lastCheckpoint);
            state.Step = step + 1;
            state.LossHistory.Add(loss);

            bool last = state.Step == o.MaxSteps;
            if (validation is not null && (last || (o.EvalInterval > 0 && state.Step % o.EvalInterval == 0)))
            {
                validationLoss = Evaluate(_model, validation, o.BatchSize, o.EvalBatches);
                state.ValidationHistory.Add(new StepLoss(state.Step, validationLoss.Value));
            }
            if (o.CheckpointFolder is not null && (last || (o.CheckpointInterval > 0 && state.Step % o.CheckpointInterval == 0)))
                lastCheckpoint = SaveCheckpoint(state, optimizer);

            var elapsed = clock.Elapsed;
            int done = state.Step - startStep;
            progress?.Report(new TrainingProgress(state.Step, o.MaxSteps, loss, lr, tokensPerStep * done / elapsed.TotalSeconds, elapsed,
                TimeSpan.FromSeconds(elapsed.TotalSeconds / done * (o.MaxSteps - state.Step)), validationLoss));
        }
        return new TrainingResult(state.Step, state.LossHistory.Count > 0 ? state.LossHistory[^1] : double.NaN, validationLoss, lastCheckpoint,
            state.LossHistory, state.ValidationHistory.Select(v => (v.Step, v.Loss)).ToList());
    }

    private double TrainStep(TokenBlocks train, AdamW optimizer, IReadOnlyList<(string name, Parameter parameter)> trainable, int step, double lr, string? lastCheckpoint)
    {
        var o = _options;
        using var stepScope = NewDisposeScope();
        // Dropout and batch order depend only on (seed, step): that is what makes resuming exact. Every dropout of the
        // library draws from the step's own generator, so other threads training at the same time cannot take from it.
        long stepSeed = o.Seed * 1_000_003 + step;
        using var dropout = StepDropout.Begin(stepSeed, Device);
        var random = new Random(unchecked((int)(o.Seed * 7_919 + step)));
        optimizer.ZeroGrad();
        double total = 0;
        bool learned = false;
        for (int micro = 0; micro < o.GradientAccumulationSteps; micro++)
        {
            using var scope = NewDisposeScope();
            var indices = Enumerable.Range(0, o.BatchSize).Select(_ => random.Next(train.Count)).ToArray();
            var (inputs, targets) = train.Batch(indices);
            // A micro-batch of prompts only (completion-only loss) has nothing to learn; its mean loss would be NaN.
            if (!targets.ne(Scalars.Of((long)TokenBlocks.IgnoreIndex)).any().item<bool>()) continue;
            var loss = CrossEntropy(_model.Forward(inputs.to(Device)), targets.to(Device));
            double value = loss.item<float>();
            if (!double.IsFinite(value)) throw Diverged(step, $"the loss became {value}", lastCheckpoint);
            // The reported loss stays the language-modelling loss; a method's extra term only shapes the gradient.
            if (_hook?.AdditionalLoss() is { } extra) loss = loss.Plus(extra);
            loss.Over(o.GradientAccumulationSteps).backward();
            total += value / o.GradientAccumulationSteps;
            learned = true;
        }
        if (!learned) return double.NaN; // every sampled block was prompt only: no update (weight decay included)
        if (o.MaxGradNorm > 0)
        {
            double norm = nn.utils.clip_grad_norm_(trainable.Select(p => p.parameter).Where(p => p.grad is not null), o.MaxGradNorm);
            if (!double.IsFinite(norm)) throw Diverged(step, $"the gradient norm became {norm}", lastCheckpoint);
        }
        optimizer.Step(lr);
        _hook?.AfterOptimizerStep(step + 1);
        return total;
    }

    private static TrainingDivergedException Diverged(int step, string what, string? lastCheckpoint) =>
        new(step + 1, lastCheckpoint, $"Training diverged at step {step + 1}: {what}. " +
            (lastCheckpoint is null ? "No checkpoint was written before it." : $"The last good checkpoint is '{lastCheckpoint}'.") +
            " Lower the learning rate or enable gradient clipping (MaxGradNorm).");

    private Device Device => _model.parameters().First().device;

    /// <summary>Token-level cross-entropy, computed in float32; targets equal to <see cref="TokenBlocks.IgnoreIndex"/> are skipped.</summary>
    public static Tensor CrossEntropy(Tensor logits, Tensor targets) =>
        nn.functional.cross_entropy(logits.view(-1, logits.shape[^1]).to(ScalarType.Float32), targets.view(-1), ignore_index: TokenBlocks.IgnoreIndex);

    /// <summary>Mean next-token loss per target token over the blocks (in order; the first <paramref name="maxBatches"/> batches when given).</summary>
    public static double Evaluate(CausalLanguageModel model, TokenBlocks blocks, int batchSize, int? maxBatches = null)
    {
        bool wasTraining = model.training;
        model.eval();
        using var _ = no_grad();
        using var evaluationScope = NewDisposeScope();
        double sum = 0;
        long count = 0;
        var device = model.parameters().First().device;
        int batches = 0;
        for (int start = 0; start < blocks.Count && (maxBatches is null || batches < maxBatches); start += batchSize, batches++)
        {
            using var scope = NewDisposeScope();
            var (inputs, targets) = blocks.Batch(Enumerable.Range(start, Math.Min(batchSize, blocks.Count - start)).ToArray());
            long counted = targets.ne(Scalars.Of((long)TokenBlocks.IgnoreIndex)).sum().item<long>();
            if (counted == 0) continue;
            var loss = CrossEntropy(model.Forward(inputs.to(device)), targets.to(device));
            sum += loss.item<float>() * counted;
            count += counted;
        }
        if (wasTraining) model.train();
        return sum / count;
    }

    // Checkpoints: an HF model folder plus optimizer state and trainer state, written under a temporary name and
    // renamed into place, so a folder named checkpoint-NNNNNN is always complete.
    private string SaveCheckpoint(TrainerState state, AdamW optimizer)
    {
        var root = _options.CheckpointFolder!;
        Directory.CreateDirectory(root);
        using var scope = NewDisposeScope();
        var final = Path.Combine(root, $"checkpoint-{state.Step:D6}");
        var temp = Path.Combine(root, $".checkpoint-{state.Step:D6}.{Guid.NewGuid():N}.tmp");
        try
        {
            _model.SavePretrained(temp, weights: _options.UseBf16 ? optimizer.MasterWeights : null);
            optimizer.Save(Path.Combine(temp, OptimizerFile));
            if (_hook is not null)
            {
                var (tensors, json) = _hook.TrainingState();
                SafetensorsWriter.Save(Path.Combine(temp, MethodStateFile), tensors,
                    new Dictionary<string, string> { ["state"] = json?.ToJsonString() ?? "null" });
            }
            AtomicFile.WriteAllText(Path.Combine(temp, StateFile), JsonSerializer.Serialize(state, StateJson));
            if (Directory.Exists(final)) Directory.Delete(final, recursive: true);
            Directory.Move(temp, final);
        }
        catch
        {
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
            throw;
        }
        foreach (var old in Checkpoints(root).SkipLast(_options.KeepCheckpoints)) Directory.Delete(old, recursive: true);
        return final;
    }

    private TrainerState Restore(string checkpoint, AdamW optimizer, RunFingerprint expected)
    {
        using var scope = NewDisposeScope();
        TrainerState state;
        try
        {
            state = JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(Path.Combine(checkpoint, StateFile)), StateJson)
                ?? throw new InvalidDataException($"Checkpoint '{checkpoint}' has an empty {StateFile}.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"Checkpoint '{checkpoint}': {StateFile} is not valid ({e.Message}).", e);
        }
        // Before any weight is loaded: the folder must hold this run (model, trainable parameters, data), not another one.
        if (expected.Differences(state.Fingerprint) is { Count: > 0 } differences)
            throw new InvalidOperationException($"Checkpoint '{checkpoint}' belongs to another run: {string.Join("; ", differences)}. " +
                "Use the same model, method and data to resume, or set Resume = false (or another CheckpointFolder) to start over.");
        using (var weights = CheckpointWeights.Open(checkpoint)) _model.LoadWeights(weights, checkpoint);
        optimizer.Load(Path.Combine(checkpoint, OptimizerFile));
        if (_hook is not null)
        {
            var path = Path.Combine(checkpoint, MethodStateFile);
            if (!File.Exists(path)) throw new InvalidDataException($"Checkpoint '{checkpoint}' has no {MethodStateFile}, which the tuning method's training state needs.");
            using var file = SafetensorsFile.Open(path);
            var tensors = file.TensorNames.ToDictionary(n => n, file.ReadTensor, StringComparer.Ordinal);
            var json = file.Metadata.TryGetValue("state", out var text) ? System.Text.Json.Nodes.JsonNode.Parse(text) as System.Text.Json.Nodes.JsonObject : null;
            _hook.RestoreTrainingState(tensors, json);
        }
        if (state.Step != optimizer.StepCount)
            throw new InvalidDataException($"Checkpoint '{checkpoint}': {StateFile} says step {state.Step} but the optimizer state has {optimizer.StepCount}.");
        // Resuming is exact only with the batches the run started with; refuse rather than silently diverge.
        foreach (var (option, saved, now) in new[]
        {
            (nameof(TrainingOptions.Seed), state.Seed, _options.Seed),
            (nameof(TrainingOptions.BatchSize), (long)state.BatchSize, (long)_options.BatchSize),
            (nameof(TrainingOptions.GradientAccumulationSteps), (long)state.GradientAccumulationSteps, (long)_options.GradientAccumulationSteps),
        })
        {
            if (saved != now)
                throw new InvalidOperationException($"Checkpoint '{checkpoint}' was made with {option} = {saved}, but the options say {now}. " +
                    "Use the original value, or set Resume = false (or another CheckpointFolder) to start over.");
        }
        return state;
    }

    /// <summary>The complete checkpoints under <paramref name="folder"/>, oldest first.</summary>
    public static IReadOnlyList<string> Checkpoints(string folder) =>
        Directory.Exists(folder)
            ? Directory.GetDirectories(folder, "checkpoint-*").Where(d => !Path.GetFileName(d).Contains(".tmp", StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToList()
            : [];

    /// <summary>The newest complete checkpoint under <paramref name="folder"/>, or null.</summary>
    public static string? LatestCheckpoint(string folder) => Checkpoints(folder).LastOrDefault();

    // A step whose batches held no target token records a NaN loss.
    private static readonly JsonSerializerOptions StateJson = new() { WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    private sealed class TrainerState
    {
        public RunFingerprint? Fingerprint { get; set; }
        public int Step { get; set; }
        public long Seed { get; set; }
        public int BatchSize { get; set; }
        public int GradientAccumulationSteps { get; set; }
        public List<double> LossHistory { get; set; } = [];
        public List<StepLoss> ValidationHistory { get; set; } = [];
    }

    private sealed record StepLoss(int Step, double Loss);
}
