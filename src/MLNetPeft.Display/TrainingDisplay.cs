using MLNetPeft.Checkpoints;
using MLNetPeft.Training;
using ScottPlot;
using Spectre.Console;

namespace MLNetPeft.Cli;

/// <summary>
/// Shows a fit as it runs: a live Spectre.Console progress bar (step, loss, tokens/s, ETA) on an interactive console,
/// a line every few steps otherwise (a log, CI); keeps the loss history for <see cref="SavePlot"/>.
/// </summary>
internal sealed class TrainingDisplay(IAnsiConsole console, int totalSteps, int evalInterval)
{
    private readonly List<(int Step, double Loss)> _losses = [];
    private readonly List<(int Step, double Loss)> _validation = [];
    private ProgressTask? _task;

    public IReadOnlyList<(int Step, double Loss)> Losses => _losses;

    /// <summary>Runs <paramref name="fit"/>, which reports through the progress this returns to it.</summary>
    public T Run<T>(Func<IProgress<TrainingProgress>, T> fit)
    {
        var progress = new SynchronousProgress<TrainingProgress>(Report);
        if (!console.Profile.Capabilities.Interactive) return fit(progress);
        T result = default!;
        console.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(context =>
            {
                _task = context.AddTask("training", maxValue: totalSteps);
                result = fit(progress);
            });
        return result;
    }

    private void Report(TrainingProgress p)
    {
        _losses.Add((p.Step, p.Loss));
        // The progress repeats the latest validation loss; it is new at the evaluation steps (and the last).
        if (p.ValidationLoss is { } validation && evalInterval > 0 && (p.Step % evalInterval == 0 || p.Step == p.TotalSteps)) _validation.Add((p.Step, validation));
        string line = $"step {p.Step}/{p.TotalSteps}  loss {p.Loss:F4}{(p.ValidationLoss is { } v ? $"  validation {v:F4}" : "")}  {p.TokensPerSecond:F0} tokens/s  ETA {p.Eta:hh\\:mm\\:ss}";
        if (_task is not null)
        {
            _task.Description = line;
            _task.MaxValue = p.TotalSteps;
            _task.Value = p.Step;
        }
        else if (p.Step == 1 || p.Step == p.TotalSteps || p.Step % 10 == 0)
        {
            console.WriteLine(line);
        }
    }

    /// <summary>The training loss by step (and the validation loss where measured) as a PNG, written atomically.</summary>
    public void SavePlot(string path, string title)
    {
        if (_losses.Count == 0) return;
        var plot = new Plot();
        var training = plot.Add.Scatter(_losses.Select(l => (double)l.Step).ToArray(), _losses.Select(l => l.Loss).ToArray());
        training.LegendText = "training loss";
        training.MarkerSize = 0;
        if (_validation.Count > 0)
        {
            var validation = plot.Add.Scatter(_validation.Select(l => (double)l.Step).ToArray(), _validation.Select(l => l.Loss).ToArray());
            validation.LegendText = "validation loss";
            validation.MarkerSize = 6;
        }
        plot.Title(title);
        plot.XLabel("optimizer step");
        plot.YLabel("loss");
        plot.ShowLegend(Alignment.UpperRight);
        byte[] png = plot.GetImageBytes(800, 500, ImageFormat.Png);
        AtomicFile.Write(path, stream => stream.Write(png));
    }
}
