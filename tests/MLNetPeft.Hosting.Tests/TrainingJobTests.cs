using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Tasks;
using MLNetPeft.Generation;
using MLNetPeft.Hosting.Training;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.Training;
using MLNetPeft.Tuners.Lora;

namespace MLNetPeft.Hosting.Tests;

public class TrainingJobTests(Xunit.Abstractions.ITestOutputHelper output)
{
    public sealed class Row
    {
        public string Prompt { get; set; } = "";
        public string Response { get; set; } = "";
    }

    private const int Steps = 12;

    private static Row[] Rows() =>
        InstructionTasks.Generate(InstructionTasks.TrainingSet(BaseModelRecipe.World()), 1, 1).Take(48)
            .Select(e => new Row { Prompt = e.Prompt, Response = e.Completion }).ToArray();

    /// <summary>A host whose only service is a LoRA fine-tuning job of the bundled model; every step's loss lands in <paramref name="losses"/>.</summary>
    private static IHost JobHost(string folder, ConcurrentDictionary<int, double> losses, Action<int>? onStep = null, ConcurrentQueue<string>? logs = null)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { ContentRootPath = folder, DisableDefaults = true });
        if (logs is not null) builder.Logging.AddProvider(new ListLoggerProvider(logs));
        builder.Services.AddMLNetPeftTrainingJob("sft", job =>
        {
            job.OutputPath = "models/sft.zip";
            job.CheckpointFolder = "checkpoints/sft";
            job.LogInterval = 4;
        }, (_, context) =>
        {
            var ml = new MLContext(seed: 1);
            var model = BundledBaseModel.Load();
            var options = context.Configure(new CausalLmFineTuningOptions
            {
                Lora = new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = [LoraConfig.AllLinear] },
                Training = new TrainingOptions { MaxSteps = Steps, BatchSize = 4, LearningRate = 5e-3, WarmupSteps = 2, WeightDecay = 0, Seed = 3 },
                MaxLength = 48, Seed = 1, Generation = new GenerationOptions { MaxNewTokens = 6, StopStrings = ["\n"] },
                ResponseColumnName = "Response",
                Progress = new SynchronousProgress<TrainingProgress>(p => { losses[p.Step] = p.Loss; onStep?.Invoke(p.Step); }),
            });
            return new TrainingJobPlan
            {
                MLContext = ml,
                Estimator = ml.Transforms.Text.FineTuneCausalLm(model, BundledBaseModel.LoadTokenizer(), options),
                TrainingData = ml.Data.LoadFromEnumerable(Rows()),
                Resources = [model],
            };
        });
        return builder.Build();
    }

    private static string[] Answers(string zip)
    {
        var ml = new MLContext(seed: 1);
        var model = ml.Model.Load(zip, out _);
        try { return model.Transform(ml.Data.LoadFromEnumerable(Rows().Take(6))).GetColumn<string>("GeneratedText").ToArray(); }
        finally { (model as IDisposable)?.Dispose(); }
    }

    [Fact]
    public async Task AJobStoppedWithTheHostResumesOnTheNextStartAndEndsAsAnUninterruptedRun()
    {
        using var straight = new TempFolder();
        var straightLosses = new ConcurrentDictionary<int, double>();
        using (var host = JobHost(straight.Path, straightLosses))
        {
            await host.StartAsync();
            var status = host.Services.GetRequiredKeyedService<TrainingJobStatus>("sft");
            Assert.Equal(TrainingJobState.Completed, await status.Finished.WaitAsync(TimeSpan.FromMinutes(3)));
            Assert.Null(status.ResumedFrom);
            await host.StopAsync();
        }
        Assert.Equal(Steps, straightLosses.Count);

        using var stopped = new TempFolder();
        var firstLosses = new ConcurrentDictionary<int, double>();
        var logs = new ConcurrentQueue<string>();
        var atStep4 = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var stopRequested = new ManualResetEventSlim();
        TimeSpan stopTook;
        // Step 4 waits until the host is asked to stop, so the stop lands between steps 4 and 5 however slow the machine.
        using (var host = JobHost(stopped.Path, firstLosses, step => { if (step == 4) { atStep4.TrySetResult(); stopRequested.Wait(TimeSpan.FromMinutes(1)); } }, logs))
        {
            await host.StartAsync();
            await atStep4.Task.WaitAsync(TimeSpan.FromMinutes(3));
            var clock = Stopwatch.StartNew();
            var stopping = host.StopAsync();
            stopRequested.Set();
            await stopping;
            stopTook = clock.Elapsed;
            var status = host.Services.GetRequiredKeyedService<TrainingJobStatus>("sft");
            Assert.Equal(TrainingJobState.Stopped, await status.Finished);
            Assert.False(File.Exists(status.OutputPath));
        }
        string checkpoint = Trainer.LatestCheckpoint(stopped.File("checkpoints/sft"))!;
        int stoppedAt = firstLosses.Keys.Max();
        Assert.EndsWith($"checkpoint-{stoppedAt:D6}", checkpoint);
        Assert.Equal(4, stoppedAt);
        Assert.Contains(logs, l => l.StartsWith("Training job sft: step 4/12, loss ", StringComparison.Ordinal));
        Assert.Contains(logs, l => l.StartsWith("Training job sft: stopped with the host after step 4; checkpoint ", StringComparison.Ordinal) && l.Contains(checkpoint));
        output.WriteLine($"stopped after step {stoppedAt}; StopAsync took {stopTook.TotalMilliseconds:F0} ms (checkpoint written within it)");

        var resumedLosses = new ConcurrentDictionary<int, double>();
        using (var host = JobHost(stopped.Path, resumedLosses))
        {
            await host.StartAsync();
            var status = host.Services.GetRequiredKeyedService<TrainingJobStatus>("sft");
            Assert.Equal(TrainingJobState.Completed, await status.Finished.WaitAsync(TimeSpan.FromMinutes(3)));
            Assert.Equal(checkpoint, status.ResumedFrom);
            await host.StopAsync();
        }
        // The resumed run takes exactly the steps the stopped one did not, with the losses of the uninterrupted run.
        Assert.Equal(Enumerable.Range(stoppedAt + 1, Steps - stoppedAt), resumedLosses.Keys.Order());
        foreach (var (step, loss) in firstLosses.Concat(resumedLosses)) Assert.Equal(straightLosses[step], loss);
        Assert.Equal(Answers(straight.File("models/sft.zip")), Answers(stopped.File("models/sft.zip")));

        // Finished is finished: the next start trains nothing.
        using (var host = JobHost(stopped.Path, new ConcurrentDictionary<int, double>()))
        {
            await host.StartAsync();
            Assert.Equal(TrainingJobState.Skipped, await host.Services.GetRequiredKeyedService<TrainingJobStatus>("sft").Finished.WaitAsync(TimeSpan.FromMinutes(1)));
            await host.StopAsync();
        }
    }

    [Fact]
    public void JobOptionsAreCheckedAtRegistration()
    {
        var services = new ServiceCollection();
        Assert.Contains("OutputPath is required", Assert.Throws<ArgumentException>(() =>
            services.AddMLNetPeftTrainingJob("sft", job => job.CheckpointFolder = "c", (_, _) => throw new InvalidOperationException())).Message);
        Assert.Contains("CheckpointFolder is required", Assert.Throws<ArgumentException>(() =>
            services.AddMLNetPeftTrainingJob("sft", job => job.OutputPath = "m.zip", (_, _) => throw new InvalidOperationException())).Message);
    }
}
