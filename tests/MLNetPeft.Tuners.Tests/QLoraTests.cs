using MLNetPeft.Architectures;
using MLNetPeft.Training;
using MLNetPeft.Training.LanguageModeling;
using MLNetPeft.Tuners.Lora;
using MLNetPeft.Tuners.QLora;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Tests;

public class QLoraTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static LlamaForCausalLM Tiny(long seed) => TinyModels.Randomize(new LlamaForCausalLM(PeftMethodTests.TinyLlama()), seed);

    private static Tensor Run(CausalLanguageModel model, Tensor ids)
    {
        using var _ = no_grad();
        model.eval();
        return model.Forward(ids);
    }

    [Fact]
    public void QuantisedBaseWithLoraLearnsStaysFrozenSavesQuantisedAndReloads()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        using var model = Tiny(3);
        var ids = TinyModels.RandomIds(2, 7, TinyTokenizer.VocabSize, 1);
        using var full = Run(model, ids);
        long parameters = model.ParameterCount();
        var nf4 = Nf4Model.Quantize(model);
        Assert.Equal(TinyModels.Llama().NumHiddenLayers * 7, nf4.Layers.Count);   // q, k, v, o, gate, up, down; not lm_head
        using var quantized = Run(model, ids);
        double drift = (quantized - full).abs().max().item<float>() / full.abs().max().item<float>();
        var (qBytes, fBytes) = nf4.WeightBytes();
        output.WriteLine($"quantised linear weights: {qBytes:N0} bytes vs {fBytes:N0} in float32 ({(double)qBytes / fBytes:P1}); output drift {drift:P2}");
        // Really quantised, and still near: NF4's ~9 % weight RMSE (Nf4Tests) compounds through this random tiny model.
        Assert.InRange(drift, 1e-6, 0.5);
        Assert.InRange((double)qBytes / fBytes, 0.12, 0.14);   // 4.13 / 32 bits

        // The quantised base is saved in bitsandbytes' layout and reloads to the same outputs.
        Nf4Checkpoint.Save(dir.File("base"), model, nf4);
        Assert.True(Nf4Checkpoint.IsQuantized(dir.File("base")));
        var (reloaded, reloadedNf4) = Nf4Checkpoint.LoadCausalLM(dir.File("base"));
        using (reloaded) TensorAssert.BitIdentical(quantized, Run(reloaded, ids), "reloaded quantised base");

        var codes = nf4.Layers.Select(l => l.Weight.Dequantize()).ToList();
        var lora = LoraModel.Apply(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] }, seed: 1);
        Assert.Throws<NotSupportedException>(() => LoraModel.Apply(model, new LoraConfig { UseDora = true }, "dora"));
        // Quantised weights are no parameters but still count, at their logical size, as in PEFT.
        Assert.Equal(parameters + lora.ParameterCounts().Trainable, lora.ParameterCounts().Total);
        var random = new Random(3);
        var patterns = Enumerable.Range(0, 5).Select(_ => (IReadOnlyList<int>)Enumerable.Range(0, 15).Select(_ => random.Next(1, 97)).ToList()).ToList();
        var blocks = TokenBlocks.Pack(Enumerable.Range(0, 60).Select(i => patterns[i % 5]).ToList(), 16, 0);
        double before = LanguageModelTrainer.Evaluate(model, blocks, 8, 4);
        new LanguageModelTrainer(model, new TrainingOptions { MaxSteps = 40, BatchSize = 8, LearningRate = 1e-2, WarmupSteps = 4, WeightDecay = 0, Seed = 2 }).Train(blocks);
        double after = LanguageModelTrainer.Evaluate(model, blocks, 8, 4);
        output.WriteLine($"QLoRA loss {before:F3} -> {after:F3}");
        Assert.True(after < before - 0.3, $"loss {before:F3} -> {after:F3}");
        for (int i = 0; i < codes.Count; i++) TensorAssert.BitIdentical(codes[i], nf4.Layers[i].Weight.Dequantize(), nf4.Layers[i].ModuleName);
        using var adapted = Run(model, ids);
        GenerationCheck.CachedEqualsRecomputed(model);

        // The adapter on the reloaded quantised base gives the same outputs.
        PeftAdapterFiles.Save(dir.File("adapter"), lora);
        var (second, _) = Nf4Checkpoint.LoadCausalLM(dir.File("base"));
        using (second)
        {
            PeftAdapterFiles.Load(second, dir.File("adapter"), out var unused);
            Assert.Empty(unused);
            TensorAssert.BitIdentical(adapted, Run(second, ids), "quantised base + reloaded adapter");
        }

        // Merging: dequantise, fold LoRA in, a plain float model remains with the same outputs.
        nf4.Dequantize();
        lora.MergeAndUnload();
        TensorAssert.Close(adapted, Run(model, ids), 1e-4, "merged into the dequantised weights");
        Assert.All(model.parameters(), p => Assert.True(p.numel() > 0 && !p.stride().Contains(0L), "a real weight again"));
    }

    /// <summary>
    /// The NF4 product as its own autograd function (bitsandbytes' MatMul4Bit): the same output and input gradient as an
    /// ordinary linear over the dequantised weight, in float32 and with bfloat16 compute, and no weight gradient.
    /// </summary>
    [Theory]
    [InlineData(ScalarType.Float32, 1e-5)]
    [InlineData(ScalarType.BFloat16, 3e-2)]
    public void TheQuantisedProductMatchesALinearOverTheDequantisedWeight(ScalarType computeDtype, double tolerance)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var linear = nn.Linear(24, 10);
        using (no_grad()) linear.weight!.normal_(0, 0.5, new Generator(1));
        var reference = Nf4.Quantize(linear.weight!, 8, doubleQuant: false).Dequantize();
        var bias = linear.bias!.detach().clone();
        var nf4 = Nf4Model.Quantize(new Architectures.Layers.Container("m", ("layer", linear)), new Nf4QuantizationConfig { BlockSize = 8, UseDoubleQuant = false, ComputeDtype = computeDtype });
        Assert.Equal([10L, 0L], linear.weight!.shape);   // a zero-size placeholder: no full-precision weight is kept
        var x = randn([3, 5, 24], generator: new Generator(2)).requires_grad_(true);
        var y = linear.call(x);
        var upstream = randn([3, 5, 10], generator: new Generator(3));
        (y * upstream).sum().backward();
        var xr = x.detach().clone().requires_grad_(true);
        var yr = nn.functional.linear(xr, reference, bias);
        (yr * upstream).sum().backward();
        TensorAssert.Close(yr, y, tolerance * yr.abs().max().item<float>(), "output");
        TensorAssert.Close(xr.grad!, x.grad!, tolerance * xr.grad!.abs().max().item<float>(), "input gradient");
        Assert.Null(linear.weight!.grad);
        Assert.Equal(computeDtype, nf4.Layers[0].ComputeDtype);
    }

    [Fact]
    public void Gpt2Conv1DLayersAreNotQuantisedSilently()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var gpt2 = TinyModels.Randomize(new Gpt2ForCausalLM(TinyModels.Gpt2()), 1);
        Assert.Contains("Conv1D", Assert.Throws<NotSupportedException>(() => Nf4Model.Quantize(gpt2)).Message);
    }
}
