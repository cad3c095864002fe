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
        }
        finally { Directory.Delete(folder, recursive: true); }
    }
}
