using System.Diagnostics.Metrics;
using MLNetPeft.Architectures;
using MLNetPeft.Training.LanguageModeling;

namespace MLNetPeft.Training.Tests;

/// <summary>Alone in its collection: a MeterListener hears every fit in the process, and no other test trains meanwhile.</summary>
[CollectionDefinition(nameof(TrainingMetricsTests), DisableParallelization = true)]
public sealed class TrainingMetricsCollection;

[Collection(nameof(TrainingMetricsTests))]
public class TrainingMetricsTests
{
    [Fact]
    public void EveryStepRecordsTokensLossDurationAndThroughputTaggedWithTheObjective()
    {
        var longs = new List<(string Name, long Value, string? Objective)>();
        var doubles = new List<(string Name, double Value, string? Objective)>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) => { if (instrument.Meter.Name == TrainingMetrics.MeterName) l.EnableMeasurementEvents(instrument); };
        static string? Objective(ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            foreach (var tag in tags) if (tag.Key == "mlnetpeft.objective") return tag.Value as string;
            return null;
        }
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) => { lock (longs) longs.Add((instrument.Name, value, Objective(tags))); });
        listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) => { lock (doubles) doubles.Add((instrument.Name, value, Objective(tags))); });
        listener.Start();

        var docs = Enumerable.Range(0, 40).Select(d => (IReadOnlyList<int>)Enumerable.Range(0, 12).Select(i => 1 + (d + i) % 90).ToList()).ToList();
        var data = TokenBlocks.Pack(docs, 16, 0);
        using var model = new LlamaForCausalLM(TinyModels.Llama());
        var progress = new List<TrainingProgress>();
        new LanguageModelTrainer(model, new TrainingOptions { MaxSteps = 5, BatchSize = 4, LearningRate = 1e-3, WarmupSteps = 1, Seed = 2 })
            .Train(data, progress: new SynchronousProgress<TrainingProgress>(progress.Add));
        listener.Dispose();

        Assert.Equal("language_modeling", Assert.Single(longs.Select(m => m.Objective).Distinct()));
        var tokens = longs.Where(m => m.Name == "mlnetpeft.training.tokens").Select(m => m.Value).ToList();
        Assert.Equal(5, tokens.Count);
        Assert.All(tokens, t => Assert.Equal(4 * 16, t)); // 4 blocks of 16 tokens a step
        Assert.Equal(progress.Select(p => p.Loss), doubles.Where(m => m.Name == "mlnetpeft.training.loss").Select(m => m.Value));
        Assert.Equal(5, doubles.Count(m => m.Name == "mlnetpeft.training.step.duration" && m.Value > 0));
        Assert.Equal(5, doubles.Count(m => m.Name == "mlnetpeft.training.throughput" && m.Value > 0));
    }
}
