using System.Diagnostics.Metrics;
using Microsoft.Extensions.AI;
using MLNetPeft.Hosting.AI;
using static MLNetPeft.Hosting.Tests.ChatAndEmbeddingClientTests;

namespace MLNetPeft.Hosting.Tests;

/// <summary>Alone in its collection: a MeterListener hears every request in the process.</summary>
[CollectionDefinition(nameof(GenerationMetricsTests), DisableParallelization = true)]
public sealed class GenerationMetricsCollection;

[Collection(nameof(GenerationMetricsTests))]
public class GenerationMetricsTests
{
    [Fact]
    public async Task RequestsTokensBatchSizesAndLatencyAreRecorded()
    {
        var measurements = new List<(string Name, double Value, string? Outcome)>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) => { if (instrument.Meter.Name == GenerationMetrics.MeterName) l.EnableMeasurementEvents(instrument); };
        void Add(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            string? outcome = null;
            foreach (var tag in tags) if (tag.Key == "outcome") outcome = tag.Value as string;
            lock (measurements) measurements.Add((instrument.Name, value, outcome));
        }
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) => Add(instrument, value, tags));
        listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) => Add(instrument, value, tags));
        listener.Start();

        using var bundled = new BundledChat();
        var responses = await Task.WhenAll(Enumerable.Range(0, 4).Select(i => bundled.Client.GetResponseAsync(Question($"Who is person {i}?"))));
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => bundled.Client.GetResponseAsync(Question("Who?"), cancellationToken: cancelled.Token));
        listener.Dispose();

        Assert.Equal(4, measurements.Count(m => m.Name == "mlnetpeft.generation.requests" && m.Outcome == "completed"));
        Assert.Equal(responses.Sum(r => r.Usage!.OutputTokenCount!.Value), (long)measurements.Where(m => m.Name == "mlnetpeft.generation.tokens").Sum(m => m.Value));
        Assert.Equal(4, measurements.Where(m => m.Name == "mlnetpeft.generation.batch.size").Sum(m => m.Value));
        Assert.Equal(4, measurements.Count(m => m.Name == "mlnetpeft.generation.request.duration" && m.Outcome == "completed" && m.Value > 0));
    }
}
