using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace MLNetPeft.Training;

/// <summary>
/// The training loop's instruments (System.Diagnostics.Metrics, meter <see cref="MeterName"/>), recorded after every
/// optimizer step with the objective as the <c>mlnetpeft.objective</c> tag, so that OpenTelemetry (or
/// <c>dotnet-counters</c>) sees every fit without extra code: tokens trained on (a counter, whose rate is tokens/s),
/// the step's loss, its duration and its throughput.
/// </summary>
public static class TrainingMetrics
{
    public const string MeterName = "MLNetPeft.Training";

    private static readonly Meter Meter = new(MeterName, typeof(TrainingMetrics).Assembly.GetName().Version?.ToString());
    private static readonly Counter<long> Tokens = Meter.CreateCounter<long>("mlnetpeft.training.tokens", "{token}", "Tokens in the batches trained on.");
    private static readonly Histogram<double> Loss = Meter.CreateHistogram<double>("mlnetpeft.training.loss", null, "Training loss of each optimizer step.");
    private static readonly Histogram<double> StepDuration = Meter.CreateHistogram<double>("mlnetpeft.training.step.duration", "s", "Wall time of each optimizer step.");
    private static readonly Histogram<double> Throughput = Meter.CreateHistogram<double>("mlnetpeft.training.throughput", "{token}/s", "Tokens per second of each optimizer step.");

    internal static void RecordStep(string objective, long tokens, double loss, double seconds)
    {
        var tag = new KeyValuePair<string, object?>("mlnetpeft.objective", objective);
        Tokens.Add(tokens, tag);
        Loss.Record(loss, tag);
        StepDuration.Record(seconds, tag);
        if (seconds > 0) Throughput.Record(tokens / seconds, tag);
    }
}
