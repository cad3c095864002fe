using MLNetPeft.Gguf;
using MLNetPeft.Tuners.Lora;
using Xunit.Abstractions;

namespace MLNetPeft.LlamaCpp.Tests;

/// <summary>llama.cpp applies our LoRA adapters, exported unmerged, and computes the logits of our adapted model.</summary>
public sealed class AdapterTests(ITestOutputHelper output) : FolderPerTestClass("mlnetpeft-gguf-lora-")
{
    [Theory]
    [InlineData("llama-gqa-untied", "plain")]
    [InlineData("llama-gqa-untied", "rslora-patterns")]
    [InlineData("qwen2", "plain")]
    [InlineData("mistral", "with-lm-head")]
    [InlineData("gpt2", "conv1d")]
    public void Llama_cpp_with_our_adapter_computes_our_adapted_logits(string variant, string kind)
    {
        using var model = TinyModels.Create(variant);
        var tokenizer = TinyModels.Tokenizer;
        var basePath = Path.Combine(Folder, $"{variant}-base.gguf");
        GgufModels.Export(model, tokenizer, basePath, GgufFileType.F32);
        var config = new LoraConfig
        {
            R = 4, LoraAlpha = 8, InitLoraWeights = "false",   // B random: the adapter changes the logits
            TargetModules = kind switch
            {
                "with-lm-head" => ["q_proj", "k_proj", "v_proj", "o_proj", "lm_head"],
                "conv1d" => ["c_attn", "c_proj", "c_fc"],   // GPT-2's fused q/k/v, output, and MLP up and down (c_proj matches both)
                _ => ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            },
        };
        if (kind == "rslora-patterns")
        {
            config.UseRsLora = true;
            config.RankPattern = new() { ["v_proj"] = 2, ["down_proj"] = 8 };
            config.AlphaPattern = new() { ["k_proj"] = 3 };
        }
        using var lora = LoraModel.Apply(model, config, seed: 11);
        var adapterPath = Path.Combine(Folder, $"{variant}-{kind}-lora.gguf");
        LoraGguf.Save(lora, adapterPath);

        var ids = tokenizer.Encode("The capital of Norland is Vell. What is the capital of Norland?").ToList();
        var ours = LogitDifference.Ours(model, ids);
        float[][] plain, adapted;
        using (var llama = new LlamaCpp(basePath))
        {
            plain = llama.Logits(ids);
            llama.ApplyLora(adapterPath);
            adapted = llama.Logits(ids);
        }
        var difference = LogitDifference.Between(ours, adapted);
        var adapterEffect = LogitDifference.Between(ours, plain);
        output.WriteLine($"| {variant} | {kind} | {difference} | the adapter moves logits by up to {adapterEffect.MaxAbs:E2} |");
        Assert.True(difference.Relative < LogitDifference.F32Tolerance(variant), difference.ToString());
        Assert.True(adapterEffect.MaxAbs > 1000 * difference.MaxAbs, $"the adapter hardly changes anything: {adapterEffect}");
    }

    [Fact]
    public void Adapters_llama_cpp_cannot_hold_are_refused_by_name()
    {
        using var model = TinyModels.Create("llama-gqa-untied");
        using var dora = LoraModel.Apply(model, new LoraConfig { UseDora = true });
        var e = Assert.Throws<NotSupportedException>(() => LoraGguf.Save(dora, Path.Combine(Folder, "dora.gguf")));
        Assert.Contains("DoRA", e.Message);
        Assert.False(File.Exists(Path.Combine(Folder, "dora.gguf")));
    }
}
