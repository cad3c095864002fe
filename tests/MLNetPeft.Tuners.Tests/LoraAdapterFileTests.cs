using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using MLNetPeft.Checkpoints;
using MLNetPeft.Tuners.Lora;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Tests;

public class LoraAdapterFileTests
{
    [Fact]
    public void SavedAdapterLoadsOntoAFreshBaseAndGivesTheSameOutputs()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), 1);
        var baseWeights = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        using var lora = LoraModel.Apply(model, new LoraConfig { R = 4, LoraAlpha = 8, UseRsLora = true, TargetModules = ["q_proj", "v_proj", "down_proj"] });
        using (no_grad()) foreach (var a in lora.Adapters) a.LoraB.normal_(0, 0.1, new Generator(2));
        var ids = TinyModels.RandomIds(2, 6, 101, 3);
        model.eval();
        using var expected = model.Forward(ids);
        LoraAdapterFiles.Save(dir.Path, lora, "tiny-llama");

        var json = JsonNode.Parse(File.ReadAllText(dir.File(LoraAdapterFiles.ConfigFileName)))!;
        Assert.Equal("LORA", json["peft_type"]!.GetValue<string>());
        Assert.Equal(4, json["r"]!.GetValue<int>());
        Assert.True(json["use_rslora"]!.GetValue<bool>());
        Assert.Equal(["down_proj", "q_proj", "v_proj"], json["target_modules"]!.AsArray().Select(t => t!.GetValue<string>()).Order());
        using (var file = SafetensorsFile.Open(dir.File(LoraAdapterFiles.WeightsFileName)))
            Assert.Equal(12, file.Tensors.Count);

        using var fresh = new LlamaForCausalLM(TinyModels.Llama());
        using (no_grad()) foreach (var (name, w) in baseWeights) fresh.state_dict()[name].copy_(w);
        using var loaded = LoraAdapterFiles.Load(fresh, dir.Path, out var unused);
        Assert.Empty(unused);
        Assert.Equal(lora.Config.Scaling, loaded.Adapters[0].Scaling);
        fresh.eval();
        TensorAssert.BitIdentical(expected, fresh.Forward(ids), "outputs with the reloaded adapter");
    }

    [Fact]
    public void AdapterWithWrongShapesIsRejectedNamingTheTensor()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using (var model = new LlamaForCausalLM(TinyModels.Llama()))
        using (var lora = LoraModel.Apply(model, new LoraConfig { R = 4 }))
            LoraAdapterFiles.Save(dir.Path, lora);
        var bigger = TinyModels.Llama();
        bigger.HiddenSize = 64;
        using var other = new LlamaForCausalLM(bigger);
        var e = Assert.Throws<InvalidDataException>(() => LoraAdapterFiles.Load(other, dir.Path, out _));
        Assert.Contains("lora_A.weight", e.Message);
        Assert.DoesNotContain(other.state_dict().Keys, k => k.Contains("lora_", StringComparison.Ordinal));
    }

    [SkippableFact]
    public void RealGpt2PeftAdapterMapsOntoGpt2SmallAndMergesAsTransposedBA()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var folder = SharedData.Require("peft_adapters/gpt2_lora_seqcls_emotion");
        var config = LoraAdapterFiles.ReadConfig(folder, out var unusedFields);
        Assert.Equal(8, config.R);
        Assert.Equal(8, config.LoraAlpha);
        Assert.Equal(["c_attn"], config.TargetModules);
        Assert.Contains("loftq_config", unusedFields);

        using var gpt2 = new Gpt2ForCausalLM(new Gpt2Config());   // GPT-2 small shapes, random weights
        var before = Enumerable.Range(0, 12).Select(i => gpt2.state_dict()[$"transformer.h.{i}.attn.c_attn.weight"].clone()).ToList();
        using var lora = LoraAdapterFiles.Load(gpt2, folder, out var unusedKeys);
        Assert.Equal(["base_model.model.score.weight"], unusedKeys); // the sequence-classification head (modules_to_save)
        Assert.Equal(12, lora.Adapters.Count);
        Assert.All(lora.Adapters, a => Assert.True(a.FanInFanOut));
        lora.Merge();

        using var file = SafetensorsFile.Open(Path.Combine(folder, LoraAdapterFiles.WeightsFileName));
        for (int i = 0; i < 12; i++)
        {
            using var a = file.ReadTensor($"base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight");   // [8, 768]
            using var b = file.ReadTensor($"base_model.model.transformer.h.{i}.attn.c_attn.lora_B.weight");   // [2304, 8]
            var after = gpt2.state_dict()[$"transformer.h.{i}.attn.c_attn.weight"];                           // [768, 2304]
            TensorAssert.Close((b.matmul(a) * (8.0 / 8)).t(), after - before[i], 1e-6, $"layer {i} merge delta");
        }
    }

    [SkippableFact]
    public void RealDistilBertPeftConfigParsesAndReportsNewerFields()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var folder = SharedData.Require("peft_adapters/distilbert_lora_seqcls_imdb");
        var config = LoraAdapterFiles.ReadConfig(folder, out var unusedFields);
        Assert.Equal(8, config.R);
        Assert.Equal(16, config.LoraAlpha);
        Assert.Equal(0.1, config.LoraDropout, 12);
        Assert.Equal(["v_lin", "q_lin"], config.TargetModules);
        Assert.Contains("lora_bias", unusedFields);
        Assert.Contains("qalora_group_size", unusedFields);
    }
}
