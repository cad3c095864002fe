using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using MLNetPeft.Checkpoints;
using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

public class CheckpointTests
{
    public static TheoryData<string> Families => ["gpt2", "llama", "qwen2", "bert"];

    private static PretrainedModule Create(string family) => family switch
    {
        "gpt2" => TinyModels.Randomize(new Gpt2ForCausalLM(TinyModels.Gpt2()), 21),
        "llama" => TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama(new() { RopeType = "llama3", Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 16 })), 22),
        "qwen2" => TinyModels.Randomize(new Qwen2ForCausalLM(TinyModels.Qwen2()), 23),
        "bert" => TinyModels.Randomize(new BertModel(TinyModels.Bert()), 24),
        _ => throw new ArgumentException(family),
    };

    private static Tensor Run(PretrainedModule model, Tensor ids)
    {
        using var _ = no_grad();
        return model switch
        {
            CausalLanguageModel lm => lm.Forward(ids),
            BertModel bert => bert.Forward(ids).LastHiddenState,
            _ => throw new ArgumentException(model.GetType().Name),
        };
    }

    private static PretrainedModule Load(string family, string folder, ModelLoadOptions? options = null) =>
        family == "bert" ? PretrainedModels.LoadBert(folder, options) : PretrainedModels.LoadCausalLM(folder, options);

    [Theory]
    [MemberData(nameof(Families))]
    public void SaveThenLoadGivesBitIdenticalOutputs(string family)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = Create(family);
        var ids = TinyModels.RandomIds(2, 9, model.Config.VocabSize, 5);
        using var before = Run(model, ids);
        model.SavePretrained(dir.Path);
        Assert.True(File.Exists(dir.File("config.json")));
        Assert.True(File.Exists(dir.File("model.safetensors")));

        using var loaded = Load(family, dir.Path);
        Assert.Equal(model.GetType(), loaded.GetType());
        Assert.Empty(loaded.LoadReport!.UnusedCheckpointKeys);
        using var after = Run(loaded, ids);
        TensorAssert.BitIdentical(before, after, $"{family} outputs after save/load");
    }

    [Fact]
    public void ShardedSaveLoadsTheSame()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = Create("llama");
        model.SavePretrained(dir.Path, maxShardBytes: 20_000);
        Assert.True(File.Exists(dir.File(CheckpointWeights.IndexFileName)));
        using var loaded = PretrainedModels.LoadCausalLM(dir.Path);
        var ids = TinyModels.RandomIds(1, 6, 101, 1);
        TensorAssert.BitIdentical(Run(model, ids), Run(loaded, ids));
    }

    [Fact]
    public void ConfigKeepsFieldsItDoesNotUse()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using (var model = Create("llama")) model.SavePretrained(dir.Path);
        var json = JsonNode.Parse(File.ReadAllText(dir.File("config.json")))!;
        json["my_custom_field"] = new JsonObject { ["nested"] = 3 };
        json["eos_token_id"] = new JsonArray(1, 2, 3);
        File.WriteAllText(dir.File("config.json"), json.ToJsonString());

        using var reloaded = PretrainedModels.LoadCausalLM(dir.Path);
        Assert.Equal([1, 2, 3], reloaded.Config.EosTokenIds);
        var again = new TempFolder();
        reloaded.SavePretrained(again.Path);
        var saved = JsonNode.Parse(File.ReadAllText(again.File("config.json")))!;
        Assert.Equal(3, saved["my_custom_field"]!["nested"]!.GetValue<int>());
        Assert.Equal("llama3", saved["rope_scaling"]!["rope_type"]!.GetValue<string>());
        Assert.Equal(3, saved["eos_token_id"]!.AsArray().Count);
        again.Dispose();
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Bfloat16OptionLoadsBf16WeightsThatStayClose(string family)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = Create(family);
        model.SavePretrained(dir.Path);
        using var bf16 = Load(family, dir.Path, new ModelLoadOptions { DType = ScalarType.BFloat16 });
        Assert.All(bf16.parameters(), p => Assert.Equal(ScalarType.BFloat16, p.dtype));
        var ids = TinyModels.RandomIds(1, 8, model.Config.VocabSize, 2);
        using var reference = Run(model, ids);
        using var low = Run(bf16, ids).to(ScalarType.Float32);
        double scale = reference.abs().max().item<float>();
        TensorAssert.Close(reference, low, 0.05 * scale + 0.05, "bf16 logits");

        bf16.SavePretrained(dir.File("bf16"));
        using var file = SafetensorsFile.Open(Path.Combine(dir.File("bf16"), "model.safetensors"));
        Assert.All(file.Tensors, t => Assert.Equal(SafetensorsDType.BF16, t.DType));
        Assert.Equal("bfloat16", JsonNode.Parse(File.ReadAllText(Path.Combine(dir.File("bf16"), "config.json")))!["torch_dtype"]!.GetValue<string>());
    }

    [Fact]
    public void CudaWithoutAGpuIsAClearError()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        Skip.If(cuda.is_available(), "this machine has CUDA");
        using var dir = new TempFolder();
        using (var model = Create("gpt2")) model.SavePretrained(dir.Path);
        var e = Assert.Throws<NotSupportedException>(() => PretrainedModels.LoadCausalLM(dir.Path, new ModelLoadOptions { Device = "cuda" }));
        Assert.Contains("CUDA is not available", e.Message);
    }

    [Fact]
    public void MissingOrMisshapenWeightsAreNamed()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using (var model = Create("gpt2")) model.SavePretrained(dir.Path);
        var weights = SafetensorsFile.Open(dir.File("model.safetensors"));
        var all = weights.ReadAll();
        weights.Dispose();

        var withoutOne = all.Where(kv => kv.Key != "transformer.h.1.mlp.c_fc.bias").ToDictionary();
        CheckpointWeights.Save(dir.Path, withoutOne);
        var missing = Assert.Throws<InvalidDataException>(() => PretrainedModels.LoadCausalLM(dir.Path));
        Assert.Contains("transformer.h.1.mlp.c_fc.bias", missing.Message);

        var misshapen = all.ToDictionary(kv => kv.Key, kv => kv.Key == "transformer.wpe.weight" ? zeros(5, 32) : kv.Value);
        CheckpointWeights.Save(dir.Path, misshapen);
        var shape = Assert.Throws<InvalidDataException>(() => PretrainedModels.LoadCausalLM(dir.Path));
        Assert.Contains("transformer.wpe.weight", shape.Message);
        Assert.Contains("[5, 32]", shape.Message);
    }

    [Theory]
    [InlineData("{\"model_type\": \"t5\", \"vocab_size\": 10}", "model_type 't5'")]
    [InlineData("{\"vocab_size\": 10}", "no 'model_type'")]
    [InlineData("{\"model_type\": \"gpt2\", \"vocab_size\": 10, \"n_embd\": 30, \"n_head\": 4}", "'n_embd'")]
    [InlineData("{\"model_type\": \"llama\", \"vocab_size\": 10, \"hidden_size\": 32, \"num_attention_heads\": 4, \"num_key_value_heads\": 3}", "'num_key_value_heads'")]
    [InlineData("{\"model_type\": \"llama\", \"vocab_size\": 0}", "'vocab_size'")]
    [InlineData("{\"model_type\": \"llama\", \"vocab_size\": 10, \"hidden_act\": \"mish\"}", "'hidden_act'")]
    [InlineData("{\"model_type\": \"bert\", \"position_embedding_type\": \"relative_key\"}", "'position_embedding_type'")]
    [InlineData("{\"model_type\": \"gpt2\", \"n_embd\": \"big\"}", "not a valid Gpt2Config")]
    public void BadConfigsAreRejectedNamingTheField(string json, string expected)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        File.WriteAllText(dir.File("config.json"), json);
        var e = Assert.ThrowsAny<Exception>(() => PretrainedModels.LoadConfig(dir.Path));
        Assert.True(e is InvalidDataException or NotSupportedException, e.GetType().Name);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void TokenIdsOutsideTheVocabularyAreRejected()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Create("gpt2");
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => model is CausalLanguageModel lm ? lm.Forward(tensor(new long[] { 1, 97 }).unsqueeze(0)) : null);
        Assert.Contains("vocab_size", e.Message);
        Assert.Throws<ArgumentException>(() => ((CausalLanguageModel)model).Forward(tensor(new long[] { 1, 2 })));
    }
}

public class ParameterCountTests
{
    [Fact]
    public void Gpt2SmallHasTheParameterCountOfTheReleasedModel()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        // GPT-2 small (124M): 124,439,808 parameters with the tied head counted once.
        using var model = new Gpt2ForCausalLM(new Gpt2Config());
        Assert.Equal(124_439_808, model.ParameterCount());
        Assert.Equal(model.ParameterCount(), model.state_dict().Values.Sum(t => t.numel()));
    }

    [Fact]
    public void StateDictHoldsExactlyTheHfNames()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var llama = new LlamaForCausalLM(TinyModels.Llama());
        var names = llama.state_dict().Keys.ToList();
        Assert.Equal(2 * 9 + 3, names.Count); // 9 tensors per layer, embeddings, final norm, lm_head
        Assert.Contains("model.layers.1.self_attn.k_proj.weight", names);
        Assert.Contains("model.layers.0.post_attention_layernorm.weight", names);
        Assert.Contains("lm_head.weight", names);
        Assert.DoesNotContain(names, n => n.Contains("._", StringComparison.Ordinal));

        using var bert = new BertModel(TinyModels.Bert());
        var bertNames = bert.state_dict().Keys.ToList();
        Assert.Equal(5 + 2 * 16 + 2, bertNames.Count);
        Assert.Contains("encoder.layer.1.attention.output.LayerNorm.bias", bertNames);
        Assert.Contains("pooler.dense.weight", bertNames);
    }
}

public class InitializationTests
{
    [Fact]
    public void TheSameSeedGivesTheSameWeightsAndAnotherSeedOthers()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var a = new LlamaForCausalLM(TinyModels.Llama());
        using var b = new LlamaForCausalLM(TinyModels.Llama());
        foreach (var (name, t) in a.state_dict()) TensorAssert.BitIdentical(t, b.state_dict()[name], name);
        b.InitializeWeights(1);
        Assert.False(a.state_dict()["model.embed_tokens.weight"].equal(b.state_dict()["model.embed_tokens.weight"]).all().item<bool>());
        using var gpt2 = new Gpt2ForCausalLM(TinyModels.Gpt2());
        using var gpt2Again = new Gpt2ForCausalLM(TinyModels.Gpt2());
        foreach (var (name, t) in gpt2.state_dict()) TensorAssert.BitIdentical(t, gpt2Again.state_dict()[name], name);
        // GPT-2's residual projections start smaller: std 0.02 / sqrt(2 · n_layer).
        double std = gpt2.state_dict()["transformer.h.0.attn.c_proj.weight"].std().item<float>();
        Assert.InRange(std, 0.02 / Math.Sqrt(4) * 0.8, 0.02 / Math.Sqrt(4) * 1.2);
    }
}
