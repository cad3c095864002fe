using System.Diagnostics;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using MLNetPeft.Checkpoints;
using MLNetPeft.Training;

namespace MLNetPeft.Hosting.Training;

/// <summary>
/// Runs one training job in the host: fits the plan's estimator with the host's stopping token, logs progress, saves the
/// model atomically when done. When the host stops mid-run, the trainer finishes the optimizer step it is in, writes a
/// checkpoint and returns, so <c>StopAsync</c> takes about one step plus the checkpoint write (the host waits up to its
/// <c>HostOptions.ShutdownTimeout</c>, 30 s by default); the next start resumes from that checkpoint.
/// </summary>
internal sealed class TrainingJobService(
    TrainingJobStatus status,
    TrainingJobOptions options,
    Func<IServiceProvider, TrainingJobContext, TrainingJobPlan> planFactory,
    IServiceProvider services,
    ILogger logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        // Off the host's start: a fit runs for minutes to hours on a thread of its own.
        await Task.Yield();
        if (options.SkipWhenOutputExists && File.Exists(status.OutputPath))
        {
            logger.LogInformation("Training job {JobName}: {OutputPath} exists, nothing to train.", status.Name, status.OutputPath);
            status.Finish(TrainingJobState.Skipped);
            return;
        }
        status.Start();
        var clock = Stopwatch.StartNew();
        try
        {
            await Task.Factory.StartNew(() => Run(stoppingToken), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).ConfigureAwait(false);
            logger.LogInformation("Training job {JobName}: done in {Elapsed}; model saved to {OutputPath}.", status.Name, clock.Elapsed, status.OutputPath);
            status.Finish(TrainingJobState.Completed);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            logger.LogInformation("Training job {JobName}: stopped with the host after step {Step}; checkpoint {Checkpoint}; the next start resumes from it.",
                status.Name, status.LastProgress?.Step ?? 0, Trainer.LatestCheckpoint(status.CheckpointFolder));
            status.Finish(TrainingJobState.Stopped);
        }
        catch (Exception e)
        {
            logger.LogError(e, "Training job {JobName} failed after step {Step}.", status.Name, status.LastProgress?.Step ?? 0);
            status.Finish(TrainingJobState.Failed, e);
            throw; // the host's BackgroundServiceExceptionBehavior decides whether the host stops
        }
    }

    private void Run(CancellationToken stoppingToken)
    {
        Directory.CreateDirectory(status.CheckpointFolder);
        var context = new TrainingJobContext(status.Name, status.CheckpointFolder, new SynchronousProgress<TrainingProgress>(OnProgress), stoppingToken);
        status.ResumedFrom = context.ResumesFrom;
        if (status.ResumedFrom is { } checkpoint) logger.LogInformation("Training job {JobName}: resuming from {Checkpoint}.", status.Name, checkpoint);
        else logger.LogInformation("Training job {JobName}: starting.", status.Name);
        var plan = planFactory(services, context) ?? throw new InvalidOperationException($"Training job '{status.Name}': the plan factory returned null.");
        try
        {
            var model = plan.Estimator.Fit(plan.TrainingData);
            try { AtomicFile.Write(status.OutputPath, stream => plan.MLContext.Model.Save(model, plan.TrainingData.Schema, stream)); }
            finally { (model as IDisposable)?.Dispose(); }
        }
        finally
        {
            foreach (var resource in plan.Resources) resource.Dispose();
        }
    }

    private void OnProgress(TrainingProgress p)
    {
        status.Report(p);
        if (p.Step == 1 || p.Step == p.TotalSteps || p.Step % options.LogInterval == 0)
            logger.LogInformation("Training job {JobName}: step {Step}/{TotalSteps}, loss {Loss:F4}, learning rate {LearningRate:G3}, {TokensPerSecond:F0} tokens/s.",
                status.Name, p.Step, p.TotalSteps, p.Loss, p.LearningRate, p.TokensPerSecond);
    }
}
