using MLNetPeft.Architectures;
using MLNetPeft.Training;
using MLNetPeft.Training.LanguageModeling;
using MLNetPeft.Tuners.Lora;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Tests;

public class LoraTests
{
    private static Tensor Run(CausalLanguageModel model, Tensor ids)
    {
        using var _ = no_grad();
        model.eval();
        return model.Forward(ids);
    }

    private static void RandomizeB(LoraModel lora, long seed)
    {
        var g = new Generator((ulong)seed);
        using var _ = no_grad();
        foreach (var a in lora.Adapters) a.LoraB.copy_(randn(a.LoraB.shape, generator: g) * 0.2);
    }

    [Fact]
    public void FreshAdaptersChangeNothingAndDisabledAdaptersReproduceTheBaseExactly()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), 1);
        var ids = TinyModels.RandomIds(2, 7, 101, 1);
        using var before = Run(model, ids);
        using var lora = LoraModel.Apply(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = [LoraConfig.AllLinear] });
        TensorAssert.BitIdentical(before, Run(model, ids), "outputs with B = 0");
        RandomizeB(lora, 2);
        Assert.True((Run(model, ids) - before).abs().max().item<float>() > 1e-3);
        lora.SetAdaptersEnabled(false);
        TensorAssert.BitIdentical(before, Run(model, ids), "outputs with adapters disabled");
    }

    [Theory]
    [InlineData("llama", false)]
    [InlineData("gpt2", false)]
    [InlineData("llama", true)]
    public void AdaptedLayerComputesBaseOutputPlusScaledLowRankUpdate(string family, bool rsLora)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        CausalLanguageModel model = family == "gpt2"
            ? TinyModels.Randomize(new Gpt2ForCausalLM(TinyModels.Gpt2()), 3)
            : TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), 3);
        var config = new LoraConfig { R = 4, LoraAlpha = 16, UseRsLora = rsLora };
        using var lora = LoraModel.Apply(model, config);
        RandomizeB(lora, 4);
        Assert.Equal(rsLora ? 16 / 2.0 : 16 / 4.0, config.Scaling);
        var adapter = lora.Adapters[0];
        var layer = (nn.Module<Tensor, Tensor>)model.named_modules().First(m => m.name == adapter.ModuleName).module;
        var x = randn([3, adapter.InFeatures], generator: new Generator(5));
        using var _ = no_grad();
        // Base: x·Wᵀ + b (nn.Linear) or x·W + b (Conv1D, stored [in, out]); update: x·Aᵀ·Bᵀ·scaling.
        var w = adapter.FanInFanOut ? adapter.BaseWeight : adapter.BaseWeight.t();
        var expected = x.matmul(w) + (adapter.BaseBias is { } b ? b : zeros(1)) + x.matmul(adapter.LoraA.t()).matmul(adapter.LoraB.t()) * config.Scaling;
        TensorAssert.Close(expected, layer.call(x), 1e-5, "adapted layer output");
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("gpt2")]
    public void MergeGivesTheSameOutputsAndUnmergeRestoresTheBase(string family)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        CausalLanguageModel model = family == "gpt2"
            ? TinyModels.Randomize(new Gpt2ForCausalLM(TinyModels.Gpt2()), 6)
            : TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), 6);
        var baseWeights = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var ids = TinyModels.RandomIds(2, 6, model.Config.VocabSize, 2);
        using var lora = LoraModel.Apply(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = [LoraConfig.AllLinear] });
        RandomizeB(lora, 7);
        using var adapted = Run(model, ids);
        lora.Merge();
        Assert.All(lora.Adapters, a => Assert.True(a.Merged));
        TensorAssert.Close(adapted, Run(model, ids), 1e-4, "merged outputs");
        // Merging changes each weight by exactly ΔW = B·A·scaling (transposed for Conv1D).
        var first = lora.Adapters[0];
        var baseName = first.ModuleName + ".weight";
        TensorAssert.Close(baseWeights[baseName] + first.DeltaWeight(), first.BaseWeight, 1e-6, "merged weight");
        lora.Unmerge();
        foreach (var (name, w) in baseWeights) TensorAssert.Close(w, model.state_dict()[name], 1e-6, name);
    }

    [Fact]
    public void MergeAndUnloadLeavesAPlainModelThatSavesAndLoads()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), 8);
        var ids = TinyModels.RandomIds(1, 6, 101, 3);
        var lora = LoraModel.Apply(model, new LoraConfig { R = 2, LoraAlpha = 4 });
        RandomizeB(lora, 9);
        using var adapted = Run(model, ids);
        lora.MergeAndUnload();
        Assert.DoesNotContain(model.state_dict().Keys, k => k.Contains("lora_", StringComparison.Ordinal));
        TensorAssert.Close(adapted, Run(model, ids), 1e-4, "outputs after merge-and-unload");
        model.SavePretrained(dir.Path);
        using var reloaded = PretrainedModels.LoadCausalLM(dir.Path);
        TensorAssert.BitIdentical(Run(model, ids), Run(reloaded, ids));
    }

    [Fact]
    public void UnloadRestoresTheBaseModel()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), 10);
        var ids = TinyModels.RandomIds(1, 6, 101, 4);
        using var before = Run(model, ids);
        var lora = LoraModel.Apply(model, new LoraConfig { R = 2 });
        RandomizeB(lora, 11);
        lora.Unload();
        TensorAssert.BitIdentical(before, Run(model, ids));
        Assert.Equal(model.state_dict().Count, new LlamaForCausalLM(TinyModels.Llama()).state_dict().Count);
    }

    [Fact]
    public void MergeRefusesNonFiniteWeights()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), 12);
        using var lora = LoraModel.Apply(model, new LoraConfig { R = 2 });
        using (no_grad()) lora.Adapters[0].LoraB.fill_(float.NaN);
        var before = lora.Adapters[0].BaseWeight.clone();
        Assert.Throws<InvalidOperationException>(() => lora.Merge());
        TensorAssert.BitIdentical(before, lora.Adapters[0].BaseWeight);
    }

    [Fact]
    public void TrainingMovesOnlyTheAdaptersAndLowersTheLoss()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        // Random weights of std 0.3 (with std 0.02 the frozen output head could not express confident predictions).
        using var model = TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), 13);
        var baseWeights = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        using var lora = LoraModel.Apply(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] }, seed: 1);
        // Five fixed random sequences, repeated: the adapters alone must learn to reproduce them.
        var random = new Random(3);
        var patterns = Enumerable.Range(0, 5).Select(_ => (IReadOnlyList<int>)Enumerable.Range(0, 15).Select(_ => random.Next(1, 101)).ToList()).ToList();
        var docs = Enumerable.Range(0, 60).Select(i => patterns[i % 5]).ToList();
        var blocks = TokenBlocks.Pack(docs, 16, 0);
        double before = LanguageModelTrainer.Evaluate(model, blocks, 8, 4);
        new LanguageModelTrainer(model, new TrainingOptions { MaxSteps = 60, BatchSize = 8, LearningRate = 1e-2, WarmupSteps = 4, Seed = 2 }).Train(blocks);
        double after = LanguageModelTrainer.Evaluate(model, blocks, 8, 4);
        Assert.True(after < before - 1.5, $"loss {before:F3} -> {after:F3}");
        foreach (var (name, w) in baseWeights) TensorAssert.BitIdentical(w, model.state_dict()[name], name);
    }

    [Fact]
    public void TargetsAreFoundByNameRegexOrAllLinearAndUnknownNamesListTheAvailableOnes()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = new LlamaForCausalLM(TinyModels.Llama());
        using (var byName = LoraModel.Apply(model, new LoraConfig { TargetModules = ["q_proj", "down_proj"] }))
            Assert.Equal(4, byName.Adapters.Count);
        using var fresh = new LlamaForCausalLM(TinyModels.Llama());
        using (var byRegex = LoraModel.Apply(fresh, new LoraConfig { TargetModulesRegex = @"model\.layers\.1\..*_proj" }))
            Assert.Equal(7, byRegex.Adapters.Count);
        using var third = new LlamaForCausalLM(TinyModels.Llama());
        using (var all = LoraModel.Apply(third, new LoraConfig { TargetModules = [LoraConfig.AllLinear] }))
        {
            Assert.Equal(14, all.Adapters.Count);
            Assert.DoesNotContain(all.Adapters, a => a.ModuleName == "lm_head");
        }
        using var fourth = new LlamaForCausalLM(TinyModels.Llama());
        var e = Assert.Throws<ArgumentException>(() => LoraModel.Apply(fourth, new LoraConfig { TargetModules = ["query", "q_proj"] }));
        Assert.Contains("'query'", e.Message);
        Assert.Contains("k_proj", e.Message);
        Assert.Contains("gate_proj", e.Message);
    }

    /// <summary>PEFT's all-linear leaves a sequence classifier's head alone (issue 2027 in PEFT): the head trains whole instead.</summary>
    [Fact]
    public void AllLinearLeavesTheClassificationHeadOut()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = new BertForSequenceClassification(new BertModel(TinyModels.Bert(), addPoolingLayer: true), 3, SequencePooling.Cls);
        using var lora = LoraModel.Apply(model, new LoraConfig { TargetModules = [LoraConfig.AllLinear] });
        Assert.DoesNotContain(lora.Adapters, a => a.ModuleName == "classifier");
        Assert.Contains(lora.Adapters, a => a.ModuleName == "bert.pooler.dense");
        Assert.Equal(2 * 6 + 1, lora.Adapters.Count);   // six linear layers per BERT layer, and the pooler
    }

    /// <summary>rank_pattern and alpha_pattern give single modules their own r and alpha (PEFT's get_pattern_key), and survive a save and load.</summary>
    [Fact]
    public void RankAndAlphaPatternsApplyPerModuleAndRoundTrip()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), 3);
        var config = new LoraConfig
        {
            R = 4, LoraAlpha = 8, TargetModules = ["q_proj", "v_proj", "down_proj"],
            RankPattern = new() { ["q_proj"] = 2, [@"layers\.1\.mlp\.down_proj"] = 6 },
            AlphaPattern = new() { ["v_proj"] = 32 },
        };
        var lora = LoraModel.Apply(model, config);
        var byName = lora.Adapters.ToDictionary(a => a.ModuleName);
        Assert.Equal(2, byName["model.layers.0.self_attn.q_proj"].Rank);
        Assert.Equal(8.0 / 2, byName["model.layers.0.self_attn.q_proj"].Scaling);
        Assert.Equal(4, byName["model.layers.0.self_attn.v_proj"].Rank);
        Assert.Equal(32.0 / 4, byName["model.layers.0.self_attn.v_proj"].Scaling);
        Assert.Equal(4, byName["model.layers.0.mlp.down_proj"].Rank);      // the pattern names layer 1 only
        Assert.Equal(6, byName["model.layers.1.mlp.down_proj"].Rank);
        Assert.Equal([2L, 32L], byName["model.layers.1.self_attn.q_proj"].LoraA.shape);
        RandomizeB(lora, 4);
        var ids = TinyModels.RandomIds(2, 5, 101, 1);
        using var expected = Run(model, ids);
        LoraAdapterFiles.Save(dir.Path, lora);
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(dir.File(LoraAdapterFiles.ConfigFileName)))!;
        Assert.Equal(2, json["rank_pattern"]!["q_proj"]!.GetValue<int>());
        Assert.Equal(32, json["alpha_pattern"]!["v_proj"]!.GetValue<double>());

        using var fresh = new LlamaForCausalLM(TinyModels.Llama());
        using (no_grad()) foreach (var (name, w) in model.state_dict().Where(kv => !kv.Key.Contains(".lora_", StringComparison.Ordinal))) fresh.state_dict()[name].copy_(w);
        using var loaded = LoraAdapterFiles.Load(fresh, dir.Path, out _);
        Assert.Equal(lora.Adapters.Select(a => (a.ModuleName, a.Rank, a.Scaling)), loaded.Adapters.Select(a => (a.ModuleName, a.Rank, a.Scaling)));
        TensorAssert.BitIdentical(expected, Run(fresh, ids), "reloaded with patterns");
    }

    [Theory]
    [InlineData(0, 8.0, "R")]
    [InlineData(4, 0.0, "LoraAlpha")]
    [InlineData(-1, 8.0, "R")]
    public void InvalidHyperparametersAreNamed(int r, double alpha, string option)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = new LlamaForCausalLM(TinyModels.Llama());
        var e = Assert.ThrowsAny<ArgumentException>(() => LoraModel.Apply(model, new LoraConfig { R = r, LoraAlpha = alpha }));
        Assert.Contains(option, e.Message);
    }

    [Fact]
    public void BiasModesChooseWhichBiasesTrain()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = new Gpt2ForCausalLM(TinyModels.Gpt2());
        using var lora = LoraModel.Apply(model, new LoraConfig { R = 2, Bias = LoraBias.LoraOnly });
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        Assert.Contains("transformer.h.0.attn.c_attn.bias", trainable);
        Assert.DoesNotContain("transformer.h.0.mlp.c_fc.bias", trainable);
        Assert.Contains("base_model.model.transformer.h.0.attn.c_attn.bias", lora.AdapterStateDict().Keys);
    }

    [Fact]
    public void AdapterStateDictUsesPeftNamesAndShapes()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = new LlamaForCausalLM(TinyModels.Llama());
        using var lora = LoraModel.Apply(model, new LoraConfig { R = 4 });
        var state = lora.AdapterStateDict();
        Assert.Equal(new long[] { 4, 32 }, state["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape);
        Assert.Equal(new long[] { 16, 4 }, state["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"].shape);
        Assert.Equal(8, state.Count);
        Assert.Contains("model.layers.0.self_attn.q_proj.lora_A.default.weight", model.state_dict().Keys);
    }

    [Fact]
    public void GaussianInitialisationHasStdOneOverR()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = new LlamaForCausalLM(TinyModels.Llama() is var c ? Wide(c) : null!);
        using var lora = LoraModel.Apply(model, new LoraConfig { R = 8, InitLoraWeights = "gaussian" });
        var std = cat(lora.Adapters.Select(a => a.LoraA.flatten()).ToArray()).std().item<float>();
        Assert.InRange(std, 0.125 * 0.9, 0.125 * 1.1);
        Assert.All(lora.Adapters, a => Assert.Equal(0, a.LoraB.abs().sum().item<float>()));
    }

    private static LlamaConfig Wide(LlamaConfig c) { c.HiddenSize = 256; c.IntermediateSize = 64; return c; }

    [Fact]
    public void TrainableParameterCountsMatchTheLoraPaperForRobertaSizes()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        // LoRA paper, table 2: RoBERTa-base with r = 8 on W_q and W_v trains 0.3M; exactly 12 · 2 · 8 · (768 + 768).
        using (var robertaBase = new BertModel(new BertConfig { VocabSize = 50265, HiddenSize = 768, NumHiddenLayers = 12, NumAttentionHeads = 12, IntermediateSize = 3072, MaxPositionEmbeddings = 514, TypeVocabSize = 1 }))
        using (var lora = LoraModel.Apply(robertaBase, new LoraConfig { R = 8, TargetModules = ["query", "value"] }))
            Assert.Equal(294_912, lora.ParameterCounts().Trainable);
        // RoBERTa-large: 24 · 2 · 8 · (1024 + 1024) = 786,432 (0.8M in the paper).
        using (var robertaLarge = new BertModel(new BertConfig { VocabSize = 50265, HiddenSize = 1024, NumHiddenLayers = 24, NumAttentionHeads = 16, IntermediateSize = 4096, MaxPositionEmbeddings = 514, TypeVocabSize = 1 }))
        using (var lora = LoraModel.Apply(robertaLarge, new LoraConfig { R = 8, TargetModules = ["query", "value"] }))
            Assert.Equal(786_432, lora.ParameterCounts().Trainable);
    }
}
