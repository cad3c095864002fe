using System.Diagnostics.Metrics;

namespace MLNetPeft.Hosting.AI;

/// <summary>
/// The serving side's instruments (meter <see cref="MeterName"/>), recorded by <see cref="GenerationBatcher"/>: requests
/// by outcome, tokens generated, batch sizes and request latency (queueing included). HTTP latency itself comes from
/// ASP.NET Core's own <c>http.server.request.duration</c>.
/// </summary>
public static class GenerationMetrics
{
    public const string MeterName = "MLNetPeft.Generation";

    private static readonly Meter Meter = new(MeterName, typeof(GenerationMetrics).Assembly.GetName().Version?.ToString());
    private static readonly Counter<long> Requests = Meter.CreateCounter<long>("mlnetpeft.generation.requests", "{request}", "Generation requests, by outcome.");
    private static readonly Counter<long> Tokens = Meter.CreateCounter<long>("mlnetpeft.generation.tokens", "{token}", "Tokens generated.");
    private static readonly Histogram<long> BatchSize = Meter.CreateHistogram<long>("mlnetpeft.generation.batch.size", "{request}", "Requests sharing one batch.");
    private static readonly Histogram<double> Duration = Meter.CreateHistogram<double>("mlnetpeft.generation.request.duration", "s",
        "Time from a request's arrival to its result, waiting for a batch included.");

    internal static void RecordBatch(int size) => BatchSize.Record(size);

    internal static void RecordRequest(string outcome, int tokens, double seconds)
    {
        var tag = new KeyValuePair<string, object?>("outcome", outcome);
        Requests.Add(1, tag);
        if (tokens > 0) Tokens.Add(tokens);
        Duration.Record(seconds, tag);
    }
}
