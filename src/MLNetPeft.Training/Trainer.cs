using MLNetPeft.Runtime;
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using MLNetPeft.Checkpoints;
using MLNetPeft.Tuners;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Training;

/// <summary>
/// The training loop every method of the library runs on: AdamW over the parameters that require grad, warm-up then
/// cosine decay, gradient accumulation and clipping, optional bf16, periodic evaluation, a guard against NaN, progress,
/// cancellation, and checkpoints that a later run resumes from exactly. What a batch is and how it becomes a loss is the
/// <see cref="TrainingObjective"/>'s. Each step's dropout and sampling are derived from (seed, step), so a run stopped
/// at step k and resumed ends with the same weights as one that never stopped.
/// </summary>
public sealed class Trainer
{
    private const string OptimizerFile = "optimizer.safetensors";
    private const string StateFile = "trainer_state.json";
    private const string MethodStateFile = "method_state.safetensors";
    private const string ObjectiveStateFile = "objective_state.safetensors";

    private readonly TrainingObjective _objective;
    private readonly PretrainedModule _model;
    private readonly TrainingOptions _options;
    private readonly ITrainingStepHook? _hook;

    /// <param name="objective">What the run learns: its data and loss.</param>
    /// <param name="options">The loop's settings.</param>
    /// <param name="hook">A tuning method that takes part in each step (AdaLoRA); its own training state is part of checkpoints.</param>
    public Trainer(TrainingObjective objective, TrainingOptions options, ITrainingStepHook? hook = null)
    {
        _objective = objective ?? throw new ArgumentNullException(nameof(objective));
        _model = objective.Model ?? throw new ArgumentException("The objective has no model.", nameof(objective));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _hook = hook;
        options.Validate();
    }

    /// <summary>Trains for <see cref="TrainingOptions.MaxSteps"/> optimizer steps (resuming from the checkpoint folder when asked).</summary>
    /// <exception cref="TrainingDivergedException">The loss or gradient norm became NaN or infinite.</exception>
    /// <exception cref="OperationCanceledException">Cancelled; a checkpoint of the last completed step was written first.</exception>
    public TrainingResult Train(IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var o = _options;
        using var scope = NewDisposeScope();   // see TensorLifetime: nothing of a run is left to the finalizer
        if (o.UseBf16) _model.to(ScalarType.BFloat16);
        _model.train();
        var trainable = _model.named_parameters().Where(p => p.parameter.requires_grad).ToList();
        if (trainable.Count == 0) throw new InvalidOperationException("No parameter of the model requires grad: there is nothing to train.");
        using var optimizer = new AdamW(trainable, o.Beta1, o.Beta2, o.Epsilon, o.WeightDecay);
        var schedule = new LearningRateSchedule(o.LearningRate, o.WarmupSteps, o.MaxSteps, o.MinLearningRate ?? o.LearningRate / 10);

        var state = new TrainerState
        {
            Seed = o.Seed, BatchSize = o.BatchSize, GradientAccumulationSteps = o.GradientAccumulationSteps,
            Fingerprint = o.CheckpointFolder is null ? null
                : RunFingerprint.Of(_model, trainable.Select(p => p.name), _objective.ExampleCount, _objective.DataFingerprint()),
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
        long tokens = 0;
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
            long stepStart = Stopwatch.GetTimestamp();
            var (loss, stepTokens, metrics) = TrainStep(optimizer, trainable, step, lr, lastCheckpoint);
            TrainingMetrics.RecordStep(_objective.MethodName, stepTokens, loss, Stopwatch.GetElapsedTime(stepStart).TotalSeconds);
            tokens += stepTokens;
            state.Step = step + 1;
            state.LossHistory.Add(loss);

            bool last = state.Step == o.MaxSteps;
            if (last || (o.EvalInterval > 0 && state.Step % o.EvalInterval == 0))
            {
                if (_objective.ValidationLoss() is { } evaluated)
                {
                    validationLoss = evaluated;
                    state.ValidationHistory.Add(new StepLoss(state.Step, evaluated));
                }
            }
            if (o.CheckpointFolder is not null && (last || (o.CheckpointInterval > 0 && state.Step % o.CheckpointInterval == 0)))
                lastCheckpoint = SaveCheckpoint(state, optimizer);

            var elapsed = clock.Elapsed;
            int done = state.Step - startStep;
            progress?.Report(new TrainingProgress(state.Step, o.MaxSteps, loss, lr, tokens / elapsed.TotalSeconds, elapsed,
                TimeSpan.FromSeconds(elapsed.TotalSeconds / done * (o.MaxSteps - state.Step)), validationLoss, metrics));
        }
        return new TrainingResult(state.Step, state.LossHistory.Count > 0 ? state.LossHistory[^1] : double.NaN, validationLoss, lastCheckpoint,
            state.LossHistory, state.ValidationHistory.Select(v => (v.Step, v.Loss)).ToList());
    }

    private (double Loss, long Tokens, IReadOnlyDictionary<string, double>? Metrics) TrainStep(AdamW optimizer, IReadOnlyList<(string name, Parameter parameter)> trainable, int step, double lr, string? lastCheckpoint)
    {
        var o = _options;
        using var stepScope = NewDisposeScope();
        // Dropout and sampling depend only on (seed, step): that is what makes resuming exact. Every dropout of the
        // library draws from the step's own generator, so other threads training at the same time cannot take from it.
        using var dropout = StepDropout.Begin(o.Seed * 1_000_003 + step, Device);
        var sampler = new Random(unchecked((int)(o.Seed * 7_919 + step)));
        optimizer.ZeroGrad();
        double total = 0;
        long tokens = 0;
        bool learned = false;
        Dictionary<string, double>? metrics = null;
        for (int micro = 0; micro < o.GradientAccumulationSteps; micro++)
        {
            using var scope = NewDisposeScope();
            if (_objective.Loss(step, micro, sampler) is not { } batch) continue;
            var loss = batch.Loss;
            double value = loss.item<float>();
            if (!double.IsFinite(value)) throw Diverged(step, $"the loss became {value}", lastCheckpoint);
            // The reported loss stays the objective's; a method's extra term only shapes the gradient.
            if (_hook?.AdditionalLoss() is { } extra) loss = loss.Plus(extra);
            loss.Over(o.GradientAccumulationSteps).backward();
            total += value / o.GradientAccumulationSteps;
            tokens += batch.Tokens;
            if (batch.Metrics is not null)
            {
                // A step's metrics are the mean over its micro-batches, as its loss is.
                metrics ??= [];
                foreach (var (name, v) in batch.Metrics) metrics[name] = metrics.GetValueOrDefault(name) + v / o.GradientAccumulationSteps;
            }
            learned = true;
        }
        if (!learned) return (double.NaN, 0, null); // no micro-batch had anything to learn: no update (weight decay included)
        if (o.MaxGradNorm > 0)
        {
            double norm = nn.utils.clip_grad_norm_(trainable.Select(p => p.parameter).Where(p => p.grad is not null), o.MaxGradNorm);
            if (!double.IsFinite(norm)) throw Diverged(step, $"the gradient norm became {norm}", lastCheckpoint);
        }
        optimizer.Step(lr);
        _hook?.AfterOptimizerStep(step + 1);
        return (total, tokens, metrics);
    }

    private static TrainingDivergedException Diverged(int step, string what, string? lastCheckpoint) =>
        new(step + 1, lastCheckpoint, $"Training diverged at step {step + 1}: {what}. " +
            (lastCheckpoint is null ? "No checkpoint was written before it." : $"The last good checkpoint is '{lastCheckpoint}'.") +
            " Lower the learning rate or enable gradient clipping (MaxGradNorm).");

    private Device Device => _model.parameters().First().device;

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
            if (_hook is not null) SaveState(Path.Combine(temp, MethodStateFile), _hook.TrainingState());
            if (_objective.TrainingState() is { } objectiveState) SaveState(Path.Combine(temp, ObjectiveStateFile), objectiveState);
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
            var (tensors, json) = LoadState(path);
            _hook.RestoreTrainingState(tensors, json);
        }
        if (Path.Combine(checkpoint, ObjectiveStateFile) is var objectivePath && File.Exists(objectivePath))
        {
            var (tensors, json) = LoadState(objectivePath);
            _objective.RestoreTrainingState(tensors, json);
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

    // A method's or objective's own state: its tensors, and the rest as JSON in the file's metadata.
    private static void SaveState(string path, (IReadOnlyDictionary<string, Tensor> Tensors, JsonObject? Json) state) =>
        SafetensorsWriter.Save(path, state.Tensors, new Dictionary<string, string> { ["state"] = state.Json?.ToJsonString() ?? "null" });

    private static (Dictionary<string, Tensor> Tensors, JsonObject? Json) LoadState(string path)
    {
        using var file = SafetensorsFile.Open(path);
        var tensors = file.TensorNames.ToDictionary(n => n, file.ReadTensor, StringComparer.Ordinal);
        return (tensors, file.Metadata.TryGetValue("state", out var text) ? JsonNode.Parse(text) as JsonObject : null);
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
