using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using MLNetPeft.Checkpoints;
using MLNetPeft.Training;
using MLNetPeft.Training.LanguageModeling;
using MLNetPeft.Tuners.AdaLora;
using MLNetPeft.Tuners.Houlsby;
using MLNetPeft.Tuners.Ia3;
using MLNetPeft.Tuners.Lora;
using MLNetPeft.Tuners.PrefixTuning;
using MLNetPeft.Tuners.PromptTuning;
using MLNetPeft.Tuners.PTuning;
using MLNetPeft.Tuners.Selective;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Tests;

/// <summary>What every PEFT method must do: start as the base model, learn, leave the base alone, switch off, save and load, merge.</summary>
public class PeftMethodTests(Xunit.Abstractions.ITestOutputHelper output)
{
    internal static CausalLanguageModel Tiny(string family, long seed) => family == "gpt2"
        ? TinyModels.Randomize(new Gpt2ForCausalLM(TinyModels.Gpt2()), seed)
        : TinyModels.Randomize(new LlamaForCausalLM(TinyLlama()), seed);

    /// <summary>The tiny Llama with the tiny tokenizer's vocabulary, so that generation can be checked.</summary>
    internal static LlamaConfig TinyLlama()
    {
        var config = TinyModels.Llama();
        config.VocabSize = TinyTokenizer.VocabSize;
        return config;
    }

    private static long Vocab(string family) => TinyTokenizer.VocabSize;

    internal static PeftModel Apply(string method, CausalLanguageModel model) => method switch
    {
        "lora" => LoraModel.Apply(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] }, seed: 1),
        "dora" => LoraModel.Apply(model, new LoraConfig { R = 8, LoraAlpha = 16, UseDora = true, TargetModules = [LoraConfig.AllLinear] }, seed: 1),
        "ia3" => Ia3Model.Apply(model, new Ia3Config()),
        "bitfit" => SelectiveModel.Apply(model, new SelectiveConfig { Tuning = SelectiveTuning.BitFit }),
        "layernorm" => SelectiveModel.Apply(model, new SelectiveConfig { Tuning = SelectiveTuning.LayerNorm }),
        "adalora" => AdaLoraModel.Apply(model, new AdaLoraConfig { InitR = 6, TargetR = 2, TInit = 5, TFinal = 10, TotalStep = 40, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] }, seed: 1),
        "houlsby" => HoulsbyModel.Apply(model, new HoulsbyConfig { ReductionFactor = 4 }, seed: 1),
        "prompt" => PromptTuningModel.Apply(model, new PromptTuningConfig { NumVirtualTokens = 4, PromptTuningInit = PromptTuningInit.SampleVocab }, seed: 1),
        "ptuning-mlp" => PTuningModel.Apply(model, new PTuningConfig { NumVirtualTokens = 4, EncoderHiddenSize = 16 }, seed: 1),
        "ptuning-lstm" => PTuningModel.Apply(model, new PTuningConfig { NumVirtualTokens = 4, EncoderHiddenSize = 16, EncoderReparameterizationType = PromptEncoderType.Lstm }, seed: 1),
        "prefix" => PrefixTuningModel.Apply(model, new PrefixTuningConfig { NumVirtualTokens = 4, PrefixProjection = true, EncoderHiddenSize = 16 }, seed: 1),
        "ptuning-v2" => PrefixTuningModel.Apply(model, PrefixTuningConfig.PTuningV2(4), seed: 1),
        _ => throw new ArgumentOutOfRangeException(nameof(method)),
    };

    private static Tensor Run(CausalLanguageModel model, Tensor ids)
    {
        using var _ = no_grad();
        model.eval();
        return model.Forward(ids);
    }

    internal static TokenBlocks ToyTask(long vocab)
    {
        // Five fixed random sequences, repeated: the method's parameters alone must learn to reproduce them.
        var random = new Random(3);
        var patterns = Enumerable.Range(0, 5).Select(_ => (IReadOnlyList<int>)Enumerable.Range(0, 15).Select(_ => random.Next(1, (int)vocab)).ToList()).ToList();
        return TokenBlocks.Pack(Enumerable.Range(0, 60).Select(i => patterns[i % 5]).ToList(), 16, 0);
    }

    [Theory]
    [InlineData("lora", "llama")]
    [InlineData("dora", "llama")]
    [InlineData("dora", "gpt2")]
    [InlineData("ia3", "llama")]
    [InlineData("ia3", "gpt2")]
    [InlineData("bitfit", "gpt2")]
    [InlineData("layernorm", "llama")]
    [InlineData("layernorm", "gpt2")]
    [InlineData("adalora", "llama")]
    [InlineData("adalora", "gpt2")]
    [InlineData("houlsby", "llama")]
    [InlineData("houlsby", "gpt2")]
    [InlineData("prompt", "llama")]
    [InlineData("prompt", "gpt2")]
    [InlineData("ptuning-mlp", "llama")]
    [InlineData("ptuning-lstm", "gpt2")]
    [InlineData("prefix", "llama")]
    [InlineData("prefix", "gpt2")]
    [InlineData("ptuning-v2", "llama")]
    public void EveryMethodStartsAsTheBaseLearnsSwitchesOffSavesLoadsAndMerges(string method, string family)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = Tiny(family, 13);
        var ids = TinyModels.RandomIds(2, 7, Vocab(family), 1);
        using var baseOutput = Run(model, ids);
        var baseWeights = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());

        var peft = Apply(method, model);
        bool promptLearning = peft is PromptLearningModel, mergeable = !promptLearning && peft is not HoulsbyModel;
        // Virtual tokens change the outputs from the start; bottleneck adapters start near the identity; the rest exactly at it.
        if (peft is HoulsbyModel) TensorAssert.Close(baseOutput, Run(model, ids), 0.05 * baseOutput.abs().max().item<float>(), "near-identity adapters");
        else if (!promptLearning) TensorAssert.BitIdentical(baseOutput, Run(model, ids), "a fresh adapter changes nothing");
        var (trainable, total) = peft.ParameterCounts();
        Assert.InRange(trainable, 1, total / 2);

        var blocks = ToyTask(Vocab(family));
        double before = LanguageModelTrainer.Evaluate(model, blocks, 8, 4);
        // IA3's few hundred scaling factors, the near-zero bottlenecks and SVD factors, and the virtual tokens of prompt learning need larger steps than weight updates.
        new LanguageModelTrainer(model, new TrainingOptions { MaxSteps = 40, BatchSize = 8, LearningRate = method switch { "ia3" => 1e-1, "houlsby" or "adalora" => 5e-2, _ => promptLearning ? 1e-1 : 1e-2 }, WarmupSteps = 4, WeightDecay = 0, Seed = 2 }, peft as ITrainingStepHook).Train(blocks);
        double after = LanguageModelTrainer.Evaluate(model, blocks, 8, 4);
        output.WriteLine($"{method} on {family}: {trainable:N0} of {total:N0} parameters train; loss {before:F3} -> {after:F3}");
        // Prepended embeddings steer a random tiny model only a little (0.1 to 0.3 here); on the pretrained bundled
        // model they learn the instruction task (ML.Tests). Everything else must cut the loss by at least 0.3.
        double required = peft is PromptTuningModel or PTuningModel ? 0.08 : 0.3;
        Assert.True(after < before - required, $"loss {before:F3} -> {after:F3}");

        // The base weights did not move (selective methods: all but the ones they tune).
        var tuned = peft is SelectiveModel s ? s.TunedParameters.ToHashSet() : [];
        foreach (var (name, w) in baseWeights.Where(kv => !tuned.Contains(kv.Key))) TensorAssert.BitIdentical(w, model.state_dict()[name], name);
        using var adapted = Run(model, ids);
        using (peft.DisableAdapters()) TensorAssert.BitIdentical(baseOutput, Run(model, ids), "adapters disabled: the base model exactly");
        TensorAssert.BitIdentical(adapted, Run(model, ids), "enabled again");
        GenerationCheck.CachedEqualsRecomputed(model);

        // PEFT adapter folder: loads onto a fresh copy of the base and gives the same outputs.
        PeftAdapterFiles.Save(dir.Path, peft, "tiny");
        using var fresh = Tiny(family, 99);
        using (no_grad()) foreach (var (name, w) in baseWeights) fresh.state_dict()[name].copy_(w);
        var loaded = PeftAdapterFiles.Load(fresh, dir.Path, out var unused);
        Assert.Empty(unused);
        Assert.Equal(peft.GetType(), loaded.GetType());
        // AdaLoRA's file keeps only the unpruned triplets: the same sums over fewer (non-zero) terms.
        if (peft is AdaLoraModel) TensorAssert.Close(adapted, Run(fresh, ids), 1e-5, "reloaded adapter");
        else TensorAssert.BitIdentical(adapted, Run(fresh, ids), "reloaded adapter");

        if (!mergeable)
        {
            // Virtual tokens and nonlinear bottlenecks have no weights to merge into.
            Assert.Throws<NotSupportedException>(() => loaded.MergeAndUnload());
            loaded.Unload();
            peft.Unload();
            TensorAssert.BitIdentical(baseOutput, Run(model, ids), "unloaded: the base model again");
            Assert.DoesNotContain(model.state_dict().Keys, k => k.StartsWith("prompt_encoder", StringComparison.Ordinal) || k.Contains(".adapter.", StringComparison.Ordinal));
            return;
        }
        // Merging folds the method into the weights: same outputs from a plain model.
        loaded.MergeAndUnload();
        Assert.DoesNotContain(fresh.state_dict().Keys, k => k.Contains("lora_", StringComparison.Ordinal) || k.Contains("ia3_l", StringComparison.Ordinal));
        TensorAssert.Close(adapted, Run(fresh, ids), 1e-4, "merged");
        peft.Unload();
        TensorAssert.BitIdentical(baseOutput, Run(model, ids), "unloaded: the base model again");
    }

    [Fact]
    public void TwoNamedAdaptersSwitchIndependentlyAndBaseOnlyReproducesTheBase()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Tiny("llama", 5);
        var ids = TinyModels.RandomIds(1, 6, 101, 2);
        using var baseOutput = Run(model, ids);
        var first = LoraModel.Apply(model, new LoraConfig { R = 4, TargetModules = ["q_proj", "v_proj"] }, "first", seed: 1);
        using (no_grad()) foreach (var a in first.Adapters) a.LoraB.normal_(0, 0.2, new Generator(3));
        using var firstOnly = Run(model, ids);
        var second = LoraModel.Apply(model, new LoraConfig { R = 2, UseDora = true, TargetModules = ["q_proj", "o_proj"] }, "second", seed: 2);
        using (no_grad()) foreach (var a in second.Adapters) a.LoraB.normal_(0, 0.2, new Generator(4));
        Assert.Contains("model.layers.0.self_attn.q_proj.lora_A.first.weight", model.state_dict().Keys);
        Assert.Contains("model.layers.0.self_attn.q_proj.lora_A.second.weight", model.state_dict().Keys);
        Assert.All(first.Adapters, a => Assert.False(a.LoraA.requires_grad));   // applying the second froze the first

        using var both = Run(model, ids);
        Assert.True((both - firstOnly).abs().max().item<float>() > 1e-3);
        second.SetAdaptersEnabled(false);
        TensorAssert.BitIdentical(firstOnly, Run(model, ids), "switched to the first adapter");
        using (first.DisableAdapters()) TensorAssert.BitIdentical(baseOutput, Run(model, ids), "base only");
        second.SetAdaptersEnabled(true);
        second.Unload();
        TensorAssert.BitIdentical(firstOnly, Run(model, ids), "second adapter removed");
        Assert.DoesNotContain(model.state_dict().Keys, k => k.Contains(".second.", StringComparison.Ordinal));
        first.Unload();
        TensorAssert.BitIdentical(baseOutput, Run(model, ids));
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("gpt2")]
    public void DoraLayerComputesMagnitudeTimesNormalisedAdaptedWeight(string family)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Tiny(family, 7);
        using var lora = LoraModel.Apply(model, new LoraConfig { R = 4, LoraAlpha = 8, UseDora = true });
        var adapter = lora.Adapters[0];
        using (no_grad())
        {
            adapter.LoraB.normal_(0, 0.3, new Generator(1));
            adapter.Magnitude!.mul_(1.5);
        }
        var layer = (nn.Module<Tensor, Tensor>)model.named_modules().First(m => m.name == adapter.ModuleName).module;
        var x = randn([3, adapter.InFeatures], generator: new Generator(2));
        using var _ = no_grad();
        // W' = m · (W + s·B·A) / ‖W + s·B·A‖ per output row, in [out, in] layout.
        var w = adapter.FanInFanOut ? adapter.BaseWeight.t() : adapter.BaseWeight;
        var adaptedW = w + adapter.LoraB.matmul(adapter.LoraA) * adapter.Scaling;
        var rowNorm = adaptedW.pow(2).sum(1, keepdim: true).sqrt();
        var expected = x.matmul((adapter.Magnitude!.unsqueeze(1) * adaptedW / rowNorm).t()) + (adapter.BaseBias is { } b ? b : zeros(1));
        TensorAssert.Close(expected, layer.call(x), 1e-5, "DoRA layer output");
    }

    [Fact]
    public void DoraNormIsDetachedSoOnlyTheLoraPathCarriesItsGradient()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Tiny("llama", 8);
        using var lora = LoraModel.Apply(model, new LoraConfig { R = 2, UseDora = true, TargetModules = ["q_proj"] });
        var adapter = lora.Adapters[0];
        using (no_grad()) adapter.LoraB.normal_(0, 0.3, new Generator(1));
        var layer = (nn.Module<Tensor, Tensor>)model.named_modules().First(m => m.name == adapter.ModuleName).module;
        var x = randn([5, adapter.InFeatures], generator: new Generator(2));
        layer.call(x).sum().backward();
        var gradB = adapter.LoraB.grad!.clone();
        // With the norm constant, d/dB of Σ (m/‖·‖) ⊙ (s·B·A·x) is (m/‖·‖) s · 1·(A x)ᵀ summed over rows.
        using var _ = no_grad();
        var w = adapter.BaseWeight + adapter.LoraB.matmul(adapter.LoraA) * adapter.Scaling;
        var scale = adapter.Magnitude! / w.pow(2).sum(1).sqrt();
        var expected = (scale * adapter.Scaling).unsqueeze(1).matmul(x.matmul(adapter.LoraA.t()).sum(0, keepdim: true));
        TensorAssert.Close(expected, gradB, 1e-4, "gradient of B with the norm detached");
        Assert.True(adapter.Magnitude!.grad!.abs().sum().item<float>() > 0);
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("gpt2")]
    public void Ia3ScalesKeyAndValueOutputsAndTheFeedForwardInput(string family)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Tiny(family, 9);
        using var ia3 = Ia3Model.Apply(model, new Ia3Config());
        var names = ia3.Layers.Select(l => l.ModuleName).ToList();
        if (family == "gpt2") Assert.Equal(["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj"], names.Take(2));
        else Assert.Equal(["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.down_proj"], names.Take(3));
        using (no_grad()) foreach (var l in ia3.Layers) l.Scale.normal_(1, 0.5, new Generator(3));
        using var _ = no_grad();
        foreach (var l in ia3.Layers.Take(family == "gpt2" ? 2 : 3))
        {
            var layer = (nn.Module<Tensor, Tensor>)model.named_modules().First(m => m.name == l.ModuleName).module;
            var (w, b) = layer switch
            {
                TorchSharp.Modules.Linear lin => (lin.weight!.t(), lin.bias),
                Conv1D c => ((Tensor)c.Weight, (Tensor?)c.Bias),
                _ => throw new InvalidOperationException(),
            };
            var x = randn([3, w.shape[0]], generator: new Generator(4));
            var plain = l.IsFeedforward ? (x * l.Scale.flatten()).matmul(w) : x.matmul(w);
            if (b is not null) plain += b;
            var expected = l.IsFeedforward ? plain : plain * l.Scale.flatten();
            Assert.Equal(l.IsFeedforward ? new long[] { 1, w.shape[0] } : new long[] { w.shape[1], 1 }, l.Scale.shape);
            TensorAssert.Close(expected, layer.call(x), 1e-5, l.ModuleName);
        }
    }

    [Fact]
    public void AdapterFilesUsePeftKeysAndFieldsForDoraAndIa3()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = Tiny("llama", 10);
        var dora = LoraModel.Apply(model, new LoraConfig { R = 4, UseDora = true });
        PeftAdapterFiles.Save(dir.File("dora"), dora);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.File("dora"), PeftAdapterFiles.ConfigFileName)))!;
        Assert.True(json["use_dora"]!.GetValue<bool>());
        // PEFT saves the DoRA magnitude without its layer's ".weight" (LoraModel._get_adapter_state_dict).
        using (var file = SafetensorsFile.Open(Path.Combine(dir.File("dora"), PeftAdapterFiles.WeightsFileName)))
        {
            Assert.Equal([TinyModels.Llama().HiddenSize], file.Info("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector").Shape);
            Assert.DoesNotContain(file.Tensors, t => t.Name.EndsWith("lora_magnitude_vector.weight", StringComparison.Ordinal));
        }
        dora.Unload();

        var ia3 = Ia3Model.Apply(model, new Ia3Config());
        PeftAdapterFiles.Save(dir.File("ia3"), ia3);
        json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.File("ia3"), PeftAdapterFiles.ConfigFileName)))!;
        Assert.Equal("IA3", json["peft_type"]!.GetValue<string>());
        Assert.Contains("model.layers.0.mlp.down_proj", json["feedforward_modules"]!.AsArray().Select(n => n!.GetValue<string>()));
        var config = TinyLlama();
        using var weights = SafetensorsFile.Open(Path.Combine(dir.File("ia3"), PeftAdapterFiles.WeightsFileName));
        long kv = (config.NumKeyValueHeads ?? config.NumAttentionHeads) * (config.HiddenSize / config.NumAttentionHeads);
        Assert.Equal([kv, 1], weights.Info("base_model.model.model.layers.0.self_attn.k_proj.ia3_l").Shape);
        Assert.Equal([1, config.IntermediateSize], weights.Info("base_model.model.model.layers.0.mlp.down_proj.ia3_l").Shape);
    }

    /// <summary>Unmerging divides by the vector plus 1e-8, as PEFT does: a zero entry leaves finite weights, not inf or NaN.</summary>
    [Fact]
    public void Ia3UnmergeOfAZeroScaleStaysFinite()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Tiny("llama", 18);
        var ia3 = Ia3Model.Apply(model, new Ia3Config());
        using (no_grad()) ia3.Layers[0].Scale.zero_();
        ia3.Merge();
        ia3.Unmerge();
        Assert.All(model.parameters(), p => Assert.True(p.isfinite().all().item<bool>()));
    }

    /// <summary>LayerNorm tuning is PEFT's LN_TUNING: keys {norm}.ln_tuning_layers.weight; files of the older LAYERNORM_TUNING type still load.</summary>
    [Fact]
    public void LayerNormTuningIsPeftsLnTuningAndTheOldTypeStillLoads()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = Tiny("llama", 19);
        var ln = SelectiveModel.Apply(model, new SelectiveConfig { Tuning = SelectiveTuning.LayerNorm });
        using (no_grad()) foreach (var p in model.parameters().Where(p => p.requires_grad)) p.add_(0.25);
        var ids = TinyModels.RandomIds(1, 6, TinyTokenizer.VocabSize, 1);
        using var tuned = Run(model, ids);
        PeftAdapterFiles.Save(dir.File("new"), ln);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.File("new"), PeftAdapterFiles.ConfigFileName)))!;
        Assert.Equal("LN_TUNING", json["peft_type"]!.GetValue<string>());
        Assert.Equal(["input_layernorm", "norm", "post_attention_layernorm"], json["target_modules"]!.AsArray().Select(n => n!.GetValue<string>()).Order());
        using (var file = SafetensorsFile.Open(Path.Combine(dir.File("new"), PeftAdapterFiles.WeightsFileName)))
        {
            Assert.Contains(file.Tensors, t => t.Name == "base_model.model.model.layers.0.input_layernorm.ln_tuning_layers.weight");
            Assert.Contains(file.Tensors, t => t.Name == "base_model.model.model.norm.ln_tuning_layers.weight");
            // The old layout: the tuned parameters under their own names, type LAYERNORM_TUNING.
            Directory.CreateDirectory(dir.File("old"));
            SafetensorsWriter.Save(Path.Combine(dir.File("old"), PeftAdapterFiles.WeightsFileName),
                file.Tensors.ToDictionary(t => t.Name.Replace(".ln_tuning_layers.", ".", StringComparison.Ordinal), t => file.ReadTensor(t.Name)));
        }
        File.WriteAllText(Path.Combine(dir.File("old"), PeftAdapterFiles.ConfigFileName), """{"peft_type": "LAYERNORM_TUNING", "task_type": "CAUSAL_LM"}""");
        foreach (var folder in new[] { "new", "old" })
        {
            using var fresh = Tiny("llama", 19);
            var loaded = PeftAdapterFiles.Load(fresh, dir.File(folder), out var unused);
            Assert.Empty(unused);
            TensorAssert.BitIdentical(tuned, Run(fresh, ids), folder);
        }
    }

    [Theory]
    [InlineData("prompt")]
    [InlineData("prefix")]
    public void VirtualTokensRespectLeftPaddingAndTheCache(string method)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Tiny("llama", 12);
        using var peft = Apply(method, model);
        using (no_grad()) foreach (var p in peft.Model.parameters().Where(p => p.requires_grad)) p.mul_(0.1);
        model.eval();
        using var _ = no_grad();
        // Row 0 alone, and row 0 left-padded by three tokens in a batch: the real tokens' logits agree.
        var row = tensor(new long[] { 5, 9, 13, 2, 7 }).unsqueeze(0);
        using var alone = model.Forward(row);
        var padded = cat([full(1, 3, 0L), row], 1);
        var mask = cat([zeros(1, 3, ScalarType.Int64), ones(1, 5, ScalarType.Int64)], 1);
        using var withPadding = model.Forward(padded, mask);
        TensorAssert.Close(alone, withPadding.narrow(1, 3, 5), 1e-5, "left-padded row");

        // Feeding the tokens one at a time through a cache gives the same logits as one pass.
        using var cache = model.CreateCache();
        for (int t = 0; t < 5; t++)
        {
            using var step = model.Forward(row.narrow(1, t, 1), ones(1, t + 1, ScalarType.Int64), cache: cache);
            TensorAssert.Close(alone.narrow(1, t, 1), step, 1e-5, $"cached step {t}");
        }
        Assert.Equal(4 + 5, cache.Length);   // the virtual tokens sit in the cache before the real ones
    }

    [Fact]
    public void VirtualTokensCountAgainstLearnedPositions()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Tiny("gpt2", 18);   // 64 learned positions
        using var prompt = PromptTuningModel.Apply(model, new PromptTuningConfig { NumVirtualTokens = 8 });
        using var _ = no_grad();
        model.Forward(TinyModels.RandomIds(1, 56, TinyTokenizer.VocabSize, 1)).Dispose();
        var e = Assert.Throws<ArgumentException>(() => model.Forward(TinyModels.RandomIds(1, 57, TinyTokenizer.VocabSize, 1)));
        Assert.Contains("virtual tokens", e.Message);
    }

    [Fact]
    public void PromptLearningAdaptersUsePeftsPromptEmbeddingsLayout()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = Tiny("llama", 13);
        var g = ModelGeometry.Of(model);
        foreach (var (name, peft, width) in new (string, Func<PeftModel>, long)[]
        {
            ("prompt", () => PromptTuningModel.Apply(model, new PromptTuningConfig { NumVirtualTokens = 5, PromptTuningInit = PromptTuningInit.Text, PromptTuningInitText = "hi" }, TinyTokenizer.Create()), g.HiddenSize),
            ("ptuning", () => PTuningModel.Apply(model, new PTuningConfig { NumVirtualTokens = 5 }), g.HiddenSize),
            ("prefix", () => PrefixTuningModel.Apply(model, new PrefixTuningConfig { NumVirtualTokens = 5, PrefixProjection = true }), g.Layers * 2 * g.KeyValueHeads * g.HeadDim),
        })
        {
            var adapter = peft();
            PeftAdapterFiles.Save(dir.File(name), adapter);
            var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.File(name), PeftAdapterFiles.ConfigFileName)))!;
            Assert.Equal(5, json["num_virtual_tokens"]!.GetValue<int>());
            Assert.Equal(g.Layers, json["num_layers"]!.GetValue<int>());
            using (var file = SafetensorsFile.Open(Path.Combine(dir.File(name), PeftAdapterFiles.WeightsFileName)))
                Assert.Equal([5, width], file.Info("prompt_embeddings").Shape);
            if (name == "prefix")
            {
                // Grouped-query attention: PEFT's token_dim is kv heads × head dim, num_attention_heads the kv heads.
                Assert.Equal(g.KeyValueHeads * g.HeadDim, json["token_dim"]!.GetValue<int>());
                Assert.Equal(g.KeyValueHeads, json["num_attention_heads"]!.GetValue<int>());
            }
            if (name == "prompt")
            {
                Assert.Equal("TEXT", json["prompt_tuning_init"]!.GetValue<string>());
                // TEXT starts from the embeddings of the text's tokens, repeated to the length ("hi" → h i h i h).
                var ids = TinyTokenizer.Create().Encode("hi");
                using var words = model.Embed(tensor(Enumerable.Range(0, 5).Select(i => (long)ids[i % ids.Count]).ToArray()).unsqueeze(0))[0];
                TensorAssert.BitIdentical(words, ((PromptTuningModel)adapter).Embeddings, "TEXT initialisation");
            }
            adapter.Unload();
        }
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("gpt2")]
    public void HoulsbyAdaptersSitAfterTheAttentionAndFeedForwardOutputProjections(string family)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Tiny(family, 14);
        using var houlsby = HoulsbyModel.Apply(model, new HoulsbyConfig { ReductionFactor = 8, NonLinearity = "gelu" });
        var names = houlsby.Adapters.Select(a => a.ModuleName).ToList();
        Assert.Equal(family == "gpt2" ? ["transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_proj"] : ["model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"], names.Take(2));
        Assert.Equal(2 * TinyLlama().NumHiddenLayers, names.Count);
        var adapter = houlsby.Adapters[0];
        Assert.Equal(32 / 8, adapter.Down.out_features);   // hidden / reduction factor
        using (no_grad()) adapter.Up.weight!.normal_(0, 0.5, new Generator(2));
        var layer = (nn.Module<Tensor, Tensor>)model.named_modules().First(m => m.name == adapter.ModuleName).module;
        var x = randn([3, family == "gpt2" ? 32 : 32], generator: new Generator(3));
        using var _ = no_grad();
        adapter.Enabled = false;
        var plain = layer.call(x);
        adapter.Enabled = true;
        var expected = plain + adapter.Up.call(nn.functional.gelu(adapter.Down.call(plain)));
        TensorAssert.Close(expected, layer.call(x), 1e-6, "y + up(gelu(down(y)))");
    }

    [Fact]
    public void AdaLoraShrinksTheRanksToTheBudgetAndSavesOnlyTheKeptTriplets()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = Tiny("llama", 15);
        var config = new AdaLoraConfig { InitR = 6, TargetR = 2, TInit = 4, TFinal = 8, DeltaT = 2, TotalStep = 40, TargetModules = [LoraConfig.AllLinear] };
        using var adalora = AdaLoraModel.Apply(model, config, seed: 3);
        int layers = adalora.Layers.Count;
        Assert.Equal(6 * layers, adalora.Allocator.InitialBudget);
        // The cubic schedule: full budget through tinit, target from total − tfinal, b(t) = (b0 − bT)(1 − (t − ti)/(T − tf − ti))³ + bT between.
        Assert.Equal((6 * layers, false), adalora.Allocator.Schedule(4));
        Assert.Equal(((int)((6 * layers - 2 * layers) * Math.Pow(1 - 6.0 / 28, 3) + 2 * layers), true), adalora.Allocator.Schedule(10));
        Assert.Equal((2 * layers, true), adalora.Allocator.Schedule(33));

        var ranks = new List<int>();
        var blocks = ToyTask(TinyTokenizer.VocabSize);
        new LanguageModelTrainer(model, new TrainingOptions { MaxSteps = 40, BatchSize = 8, LearningRate = 1e-2, WarmupSteps = 2, WeightDecay = 0, Seed = 4 }, adalora)
            .Train(blocks, progress: new SynchronousProgress<TrainingProgress>(_ => ranks.Add(adalora.Layers.Sum(l => l.ActiveRank))));
        output.WriteLine($"total rank by step: {string.Join(" ", ranks)}; per layer at the end: {string.Join(" ", adalora.Layers.Select(l => l.ActiveRank))}");
        Assert.Equal(6 * layers, ranks[0]);
        // Masking happens every deltaT steps (between them the optimizer may revive a masked Λ entry, as in PEFT);
        // at the masking steps the total rank follows the shrinking budget, and from total − tfinal it stays at the target.
        var masked = Enumerable.Range(5, 27).Where(step => step % 2 == 0).Select(step => ranks[step - 1]).ToList();
        Assert.True(masked.Zip(masked.Skip(1)).All(p => p.Second <= p.First), "the budget never grows");
        Assert.All(masked, r => Assert.True(r < 6 * layers));
        Assert.All(ranks.Skip(31), r => Assert.Equal(2 * layers, r));   // exactly the target budget
        Assert.True(adalora.Layers.Select(l => l.ActiveRank).Distinct().Count() > 1, "ranks are allocated unevenly, by importance");

        PeftAdapterFiles.Save(dir.Path, adalora);
        var json = JsonNode.Parse(File.ReadAllText(dir.File(PeftAdapterFiles.ConfigFileName)))!;
        Assert.Equal("ADALORA", json["peft_type"]!.GetValue<string>());
        var pattern = json["rank_pattern"]!.AsObject();
        Assert.Equal(layers, pattern.Count);
        using var file = SafetensorsFile.Open(dir.File(PeftAdapterFiles.WeightsFileName));
        // PEFT's keys: the lora_E parameter relative to the base model, as its RankAllocator names it; no ranknum is saved.
        Assert.DoesNotContain(pattern, kv => kv.Key.StartsWith("base_model.", StringComparison.Ordinal));
        foreach (var l in adalora.Layers)
        {
            int kept = pattern[$"{l.ModuleName}.lora_E"]!.AsArray().Count(b => b!.GetValue<bool>());
            Assert.Equal(l.ActiveRank, kept);
            Assert.Equal([kept, l.A.shape[1]], file.Info($"base_model.model.{l.ModuleName}.lora_A").Shape);
            Assert.Equal([l.B.shape[0], kept], file.Info($"base_model.model.{l.ModuleName}.lora_B").Shape);
        }
        Assert.DoesNotContain(file.Tensors, t => t.Name.EndsWith(".ranknum", StringComparison.Ordinal));

        // The pruned file loads at its pruned ranks and computes what the trained model computes.
        var ids = TinyModels.RandomIds(2, 6, TinyTokenizer.VocabSize, 5);
        model.eval();
        var expected = model.Forward(ids);
        using var fresh = Tiny("llama", 15);
        var loaded = (AdaLoraModel)PeftAdapterFiles.Load(fresh, dir.Path, out var unused);
        Assert.Empty(unused);
        Assert.Equal(adalora.Layers.Select(l => l.ActiveRank), loaded.Layers.Select(l => (int)l.A.shape[0]));
        fresh.eval();
        TensorAssert.Close(expected, fresh.Forward(ids), 1e-5, "pruned file reloaded");
    }

    [Fact]
    public void AdaLoraOrthogonalPenaltyIsTheMeanFrobeniusDistanceFromIdentity()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Tiny("llama", 16);
        using var adalora = AdaLoraModel.Apply(model, new AdaLoraConfig { InitR = 3, TargetR = 1, TotalStep = 10, OrthRegWeight = 0.5, TargetModules = ["q_proj"] });
        using var _ = no_grad();
        double expected = 0;
        foreach (var l in adalora.Layers)
        {
            expected += (l.A.matmul(l.A.t()) - eye(3)).pow(2).sum().sqrt().item<float>();
            expected += (l.B.t().matmul(l.B) - eye(3)).pow(2).sum().sqrt().item<float>();
        }
        expected = 0.5 * expected / (2 * adalora.Layers.Count);
        Assert.Equal(expected, adalora.AdditionalLoss()!.item<float>(), 4);
        Assert.Throws<ArgumentException>(() => AdaLoraModel.Apply(model, new AdaLoraConfig { TotalStep = null }, "other"));
    }

    [Fact]
    public void UnknownConfigFieldsAreToleratedWithAWarning()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = Tiny("llama", 17);
        var ia3 = Ia3Model.Apply(model, new Ia3Config());
        PeftAdapterFiles.Save(dir.Path, ia3);
        ia3.Unload();
        var path = dir.File(PeftAdapterFiles.ConfigFileName);
        var json = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        json["some_future_option"] = 3;
        json["use_fast_path"] = true;
        File.WriteAllText(path, json.ToJsonString());
        var warnings = new List<string>();
        using var loaded = PeftAdapterFiles.Load(model, dir.Path, out _, onWarning: warnings.Add);
        var warning = Assert.Single(warnings);
        Assert.Contains("some_future_option", warning);
        Assert.Contains("use_fast_path", warning);
        Assert.DoesNotContain("init_ia3_weights", warning);
    }

    [Fact]
    public void BitFitOnAModelWithoutBiasesSaysSo()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Tiny("llama", 11);
        var e = Assert.Throws<ArgumentException>(() => SelectiveModel.Apply(model, new SelectiveConfig { Tuning = SelectiveTuning.BitFit }));
        Assert.Contains("bias", e.Message);
        using var gpt2 = Tiny("gpt2", 11);
        using var bitfit = SelectiveModel.Apply(gpt2, new SelectiveConfig());
        Assert.All(bitfit.TunedParameters, n => Assert.EndsWith(".bias", n));
        using var norms = SelectiveModel.Apply(gpt2, new SelectiveConfig { Tuning = SelectiveTuning.LayerNorm });
        Assert.Contains("transformer.ln_f.weight", norms.TunedParameters);
        Assert.Contains("transformer.h.0.ln_1.bias", norms.TunedParameters);
        Assert.DoesNotContain(norms.TunedParameters, n => n.Contains("attn", StringComparison.Ordinal));
    }
}

/// <summary>P-Tuning's and prefix tuning's encoders: seeded by the caller alone, and P-Tuning's LSTM equal to libtorch's.</summary>
public class PromptEncoderTests
{
    /// <summary>A P-Tuning LSTM (2 layers, dropout between them) or prefix encoder trained twice with one seed, once while another thread draws from libtorch's generator.</summary>
    [Theory]
    [InlineData("ptuning-lstm")]
    [InlineData("ptuning-mlp")]
    [InlineData("prefix")]
    public void ASeededPromptEncoderTrainsTheSameWeightsWhileAnotherThreadDrawsRandomNumbers(string method)
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        Dictionary<string, Tensor> Train(bool crowded)
        {
            using var neighbour = crowded ? RandomDrawingThread.Start() : null;
            var model = PeftMethodTests.Tiny("llama", 3);
            PeftModel peft = method switch
            {
                "ptuning-lstm" => PTuning.PTuningModel.Apply(model, new PTuning.PTuningConfig
                    { NumVirtualTokens = 4, EncoderHiddenSize = 8, EncoderReparameterizationType = PTuning.PromptEncoderType.Lstm, EncoderDropout = 0.3 }, seed: 5),
                "ptuning-mlp" => PTuning.PTuningModel.Apply(model, new PTuning.PTuningConfig { NumVirtualTokens = 4, EncoderHiddenSize = 8 }, seed: 5),
                _ => PrefixTuning.PrefixTuningModel.Apply(model, new PrefixTuning.PrefixTuningConfig { NumVirtualTokens = 4, PrefixProjection = true, EncoderHiddenSize = 8 }, seed: 5),
            };
            new LanguageModelTrainer(model, new TrainingOptions { MaxSteps = 4, BatchSize = 4, LearningRate = 1e-2, WarmupSteps = 1, Seed = 6 })
                .Train(PeftMethodTests.ToyTask(TinyTokenizer.VocabSize));
            if (crowded) Assert.True(neighbour!.Stop() > 0);
            return model.named_parameters().Where(p => p.name.StartsWith("prompt_encoder", StringComparison.Ordinal)).ToDictionary(p => p.name, p => (Tensor)p.parameter);
        }
        var alone = Train(crowded: false);
        var crowded = Train(crowded: true);
        Assert.NotEmpty(alone);
        foreach (var (name, expected) in alone) TensorAssert.BitIdentical(expected, crowded[name], name);
    }

    [Fact]
    public void PTuningsLstmComputesWhatLibtorchsLstmComputes()
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        using var reference = nn.LSTM(6, 5, numLayers: 2, bidirectional: true, batchFirst: true);
        using var ours = new PTuning.PromptEncoderLstm(6, 5, 2, dropout: 0.0, ScalarType.Float32, new Generator(1));
        var theirs = reference.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        Assert.Equal(theirs.Keys.Order(), ours.named_parameters().Select(p => p.name).Order());
        using (no_grad()) foreach (var (name, p) in ours.named_parameters()) p.copy_(theirs[name]);
        var x = randn([3, 7, 6], generator: new Generator(2));
        TensorAssert.Close(reference.call(x).Item1, ours.call(x), 1e-6, "bidirectional two-layer LSTM");
    }
}

/// <summary>A run stopped and resumed from its checkpoint ends exactly as one that never stopped, for methods with training state of their own too.</summary>
public class ResumeTests
{
    private static PeftModel Apply(string method, CausalLanguageModel model, long seed) => method switch
    {
        // Allocation runs from step 3 to 7 of 10 and masks every step: the checkpoint at step 5 falls in the middle of it.
        "adalora" => AdaLoraModel.Apply(model, new AdaLoraConfig { InitR = 4, TargetR = 2, TInit = 2, TFinal = 3, TotalStep = 10, DeltaT = 1, LoraAlpha = 8, TargetModules = [LoraConfig.AllLinear] }, seed: seed),
        "dora" => LoraModel.Apply(model, new LoraConfig { R = 4, UseDora = true, LoraDropout = 0.2, TargetModules = ["q_proj", "v_proj"] }, seed: seed),
        "ptuning-lstm" => PTuningModel.Apply(model, new PTuningConfig { NumVirtualTokens = 3, EncoderHiddenSize = 8, EncoderReparameterizationType = PromptEncoderType.Lstm, EncoderDropout = 0.3 }, seed: seed),
        "qlora" => QuantisedLora(model, seed),
        _ => throw new ArgumentOutOfRangeException(nameof(method)),
    };

    private static PeftModel QuantisedLora(CausalLanguageModel model, long seed)
    {
        Tuners.QLora.Nf4Model.Quantize(model);
        return LoraModel.Apply(model, new LoraConfig { R = 4, LoraAlpha = 8, LoraDropout = 0.1, TargetModules = [LoraConfig.AllLinear] }, seed: seed);
    }

    [Theory]
    [InlineData("adalora")]
    [InlineData("dora")]
    [InlineData("ptuning-lstm")]
    [InlineData("qlora")]
    public void AResumedRunEndsBitIdenticalToAnUninterruptedOne(string method)
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        var data = PeftMethodTests.ToyTask(TinyTokenizer.VocabSize);
        TrainingOptions Options(string? folder) => new() { MaxSteps = 10, BatchSize = 4, LearningRate = 2e-2, WarmupSteps = 2, Seed = 9, CheckpointFolder = folder, CheckpointInterval = 5 };

        using var uninterrupted = PeftMethodTests.Tiny("llama", 21);
        var whole = Apply(method, uninterrupted, seed: 1);
        new LanguageModelTrainer(uninterrupted, Options(null), whole as ITrainingStepHook).Train(data);

        using var first = PeftMethodTests.Tiny("llama", 21);
        var stopped = Apply(method, first, seed: 1);
        using var cts = new CancellationTokenSource();
        Assert.ThrowsAny<OperationCanceledException>(() => new LanguageModelTrainer(first, Options(dir.Path), stopped as ITrainingStepHook)
            .Train(data, progress: new SynchronousProgress<TrainingProgress>(p => { if (p.Step == 5) cts.Cancel(); }), cancellationToken: cts.Token));

        // Another start (other base and adapter weights): everything must come from the checkpoint. QLoRA's frozen base
        // is quantised from the same model again, as with HF's Trainer (a checkpoint keeps what trains, not the NF4 codes).
        using var resumed = PeftMethodTests.Tiny("llama", method == "qlora" ? 21 : 22);
        var continued = Apply(method, resumed, seed: 2);
        new LanguageModelTrainer(resumed, Options(dir.Path), continued as ITrainingStepHook).Train(data);
        foreach (var (name, expected) in uninterrupted.state_dict())
            TensorAssert.BitIdentical(expected, resumed.state_dict()[name], name);
        if (whole is AdaLoraModel a && continued is AdaLoraModel b)
            Assert.Equal(a.Layers.Select(l => l.ActiveRank), b.Layers.Select(l => l.ActiveRank));
    }
}
