using MLNetPeft.Checkpoints;
using MLNetPeft.Training;
using ScottPlot;
using Spectre.Console;

namespace MLNetPeft.Display;

/// <summary>
/// Shows a fit as it runs: a live Spectre.Console progress bar (step, loss, validation loss, tokens/s, ETA) on an
/// interactive console, a line every <see cref="LineInterval"/> steps otherwise (a log, CI). It is the
/// <see cref="IProgress{T}"/> of any trainer's options (<c>Progress = display</c>), keeps the loss history, and writes
/// it as a PNG with <see cref="SavePlot"/>:
/// <code>
/// var display = new TrainingDisplay(totalSteps: 200);
/// options.Progress = display;
/// var model = display.Run(() => pipeline.Fit(data));
/// display.SavePlot("loss.png", "LoRA SFT");
/// </code>
/// </summary>
public sealed class TrainingDisplay : IProgress<TrainingProgress>
{
    private readonly IAnsiConsole _console;
    private readonly int _totalSteps;
    private readonly int _evalInterval;
    private readonly List<(int Step, double Loss)> _losses = [];
    private readonly List<(int Step, double Loss)> _validation = [];
    private ProgressTask? _task;

    /// <param name="totalSteps">The run's optimizer steps (the bar's length until the first report says otherwise).</param>
    /// <param name="evalInterval">The run's evaluation interval (<see cref="TrainingOptions.EvalInterval"/>): the steps whose validation loss is new and plotted; 0 for none.</param>
    /// <param name="console">Where to show it; null: the process's console (<see cref="AnsiConsole.Console"/>).</param>
    public TrainingDisplay(int totalSteps, int evalInterval = 0, IAnsiConsole? console = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(totalSteps);
        ArgumentOutOfRangeException.ThrowIfNegative(evalInterval);
        _console = console ?? AnsiConsole.Console;
        _totalSteps = totalSteps;
        _evalInterval = evalInterval;
    }

    /// <summary>Steps between two plain lines when the console is not interactive.</summary>
    public int LineInterval { get; init; } = 10;

    /// <summary>The training loss reported at each step.</summary>
    public IReadOnlyList<(int Step, double Loss)> Losses => _losses;

    /// <summary>The validation loss at the evaluation steps (and the last).</summary>
    public IReadOnlyList<(int Step, double Loss)> ValidationLosses => _validation;

    /// <summary>Runs <paramref name="fit"/> with the live bar shown (plain lines when the console is not interactive).</summary>
    public T Run<T>(Func<T> fit)
    {
        ArgumentNullException.ThrowIfNull(fit);
        if (!_console.Profile.Capabilities.Interactive) return fit();
        T result = default!;
        _console.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(context =>
            {
                _task = context.AddTask("training", maxValue: _totalSteps);
                try { result = fit(); }
                finally { _task = null; }
            });
        return result;
    }

    /// <summary>Runs <paramref name="fit"/>, which reports through the progress it is given (this display).</summary>
    public T Run<T>(Func<IProgress<TrainingProgress>, T> fit)
    {
        ArgumentNullException.ThrowIfNull(fit);
        return Run(() => fit(this));
    }

    public void Report(TrainingProgress value)
    {
        ArgumentNullException.ThrowIfNull(value);
        _losses.Add((value.Step, value.Loss));
        // The progress repeats the latest validation loss; it is new at the evaluation steps (and the last).
        if (value.ValidationLoss is { } validation && _evalInterval > 0 && (value.Step % _evalInterval == 0 || value.Step == value.TotalSteps))
            _validation.Add((value.Step, validation));
        string line = $"step {value.Step}/{value.TotalSteps}  loss {value.Loss:F4}{(value.ValidationLoss is { } v ? $"  validation {v:F4}" : "")}" +
            $"  {value.TokensPerSecond:F0} tokens/s  ETA {value.Eta:hh\\:mm\\:ss}";
        if (_task is { } task)
        {
            task.Description = Markup.Escape(line);
            task.MaxValue = value.TotalSteps;
            task.Value = value.Step;
        }
        else if (value.Step == 1 || value.Step == value.TotalSteps || value.Step % LineInterval == 0)
        {
            _console.WriteLine(line);
        }
    }

    /// <summary>The training loss by step (and the validation loss where measured) as a PNG, written atomically; false when nothing was reported.</summary>
    public bool SavePlot(string path, string title, int width = 800, int height = 500)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        if (_losses.Count == 0) return false;
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
        byte[] png = plot.GetImageBytes(width, height, ImageFormat.Png);
        AtomicFile.Write(path, stream => stream.Write(png));
        return true;
    }
}
