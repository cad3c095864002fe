using MLNetPeft.Samples.GgufLlamaCpp;
using Xunit.Abstractions;

namespace MLNetPeft.LlamaCpp.Tests;

public sealed class SampleTests(ITestOutputHelper output)
{
    /// <summary>
    /// samples/GgufLlamaCpp end to end: LoRA fine-tuning in an ML.NET pipeline, export of the base and the unmerged adapter,
    /// and llama.cpp answering the held-out questions exactly as our transformer does.
    /// </summary>
    [Fact]
    public void Llama_cpp_with_the_exported_adapter_answers_the_held_out_questions_as_we_do()
    {
        var folder = Directory.CreateTempSubdirectory("mlnetpeft-gguf-sample-").FullName;
        try
        {
            var log = new StringWriter();
            var result = LlamaCppSample.Run(steps: 120, folder, log, heldOutCount: 40);
            output.WriteLine(log.ToString());
            Assert.Equal(result.OurAnswers, result.LlamaCppAnswers);
            Assert.True(result.ExactMatch(result.LlamaCppAnswers) > result.ExactMatch(result.BaseAnswers) + 0.5,
                $"exact match {result.ExactMatch(result.BaseAnswers):P0} -> {result.ExactMatch(result.LlamaCppAnswers):P0}");
            // The sample's progress display saw every step, printed plain lines into the log, and drew the curve.
            Assert.Equal(Enumerable.Range(1, 120), result.Losses.Select(l => l.Step));
            Assert.True(result.Losses[^1].Loss < result.Losses[0].Loss / 2, $"loss {result.Losses[0].Loss} -> {result.Losses[^1].Loss}");
            Assert.Contains("step 120/120  loss", log.ToString());
            Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], File.ReadAllBytes(result.LossPlotPath)[..4]);
        }
        finally { Directory.Delete(folder, recursive: true); }
    }
}
