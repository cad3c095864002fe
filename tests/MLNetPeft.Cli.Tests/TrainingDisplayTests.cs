using MLNetPeft.Display;
using MLNetPeft.Training;
using Spectre.Console;

namespace MLNetPeft.Cli.Tests;

/// <summary>The progress display the CLI and the samples share (MLNetPeft.Display), on a console that is not interactive.</summary>
public class TrainingDisplayTests
{
    private static (TrainingDisplay Display, StringWriter Output) Create(int totalSteps, int evalInterval, int lineInterval)
    {
        var output = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(output), Interactive = InteractionSupport.No, Ansi = AnsiSupport.No });
        return (new TrainingDisplay(totalSteps, evalInterval, console) { LineInterval = lineInterval }, output);
    }

    private static TrainingProgress Step(int step, int total, double loss, double? validation) =>
        new(step, total, loss, 1e-3, 1000, TimeSpan.FromSeconds(step), TimeSpan.FromSeconds(total - step), validation);

    [Fact]
    public void A_run_is_printed_every_few_steps_and_plotted_with_its_validation_losses()
    {
        var (display, output) = Create(totalSteps: 12, evalInterval: 5, lineInterval: 4);
        int result = display.Run(() =>
        {
            // The trainer repeats the latest validation loss after every step; it is new at steps 5, 10 and the last.
            double? validation = null;
            for (int s = 1; s <= 12; s++)
            {
                if (s % 5 == 0 || s == 12) validation = 3.0 - s / 10.0;
                ((IProgress<TrainingProgress>)display).Report(Step(s, 12, 4.0 - s / 4.0, validation));
            }
            return 42;
        });
        Assert.Equal(42, result);
        Assert.Equal(Enumerable.Range(1, 12), display.Losses.Select(l => l.Step));
        Assert.Equal([5, 10, 12], display.ValidationLosses.Select(l => l.Step));
        Assert.Equal(2.0, display.ValidationLosses[1].Loss, 12);
        var lines = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.Equal(["step 1/12", "step 4/12", "step 8/12", "step 12/12"], lines.Select(l => l.Split("  ")[0]));
        Assert.Contains("validation 1.8000", lines[^1]);

        using var dir = new TempFolder();
        var png = dir.File("loss.png");
        Assert.True(display.SavePlot(png, "test run"));
        var bytes = File.ReadAllBytes(png);
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], bytes[..4]);
        Assert.Equal([png], Directory.GetFiles(dir.Path));   // written through a temp file, nothing left beside it
    }

    [Fact]
    public void Nothing_reported_draws_nothing_and_bad_arguments_are_named()
    {
        var (display, _) = Create(totalSteps: 3, evalInterval: 0, lineInterval: 1);
        using var dir = new TempFolder();
        Assert.False(display.SavePlot(dir.File("none.png"), "empty"));
        Assert.False(File.Exists(dir.File("none.png")));
        Assert.Equal("totalSteps", Assert.Throws<ArgumentOutOfRangeException>(() => new TrainingDisplay(0)).ParamName);
        Assert.Equal("evalInterval", Assert.Throws<ArgumentOutOfRangeException>(() => new TrainingDisplay(5, -1)).ParamName);
    }
}
