using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

/// <summary>Each family checked against the independent reference forward passes in <see cref="Reference"/>.</summary>
public class ArchitectureTests
{
    private static long[] Ids(long vocab, int length, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, length).Select(_ => (long)random.Next((int)vocab)).ToArray();
    }

    private static Tensor Logits(CausalLanguageModel model, long[] ids)
    {
        using var input = tensor(ids).unsqueeze(0);
        using var _ = no_grad();
        return model.Forward(input).squeeze(0);
    }

    [Fact]
    public void Gpt2MatchesExplicitComputation()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var config = TinyModels.Gpt2();
        using var model = TinyModels.Randomize(new Gpt2ForCausalLM(config), 1);
        var ids = Ids(config.VocabSize, 9, 1);
        TensorAssert.Close(Reference.Gpt2(model.state_dict(), config, ids), Logits(model, ids), 1e-4, "GPT-2 logits");
    }

    [Fact]
    public void LlamaWithGroupedQueryAttentionMatchesExplicitComputation()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var config = TinyModels.Llama();
        using var model = TinyModels.Randomize(new LlamaForCausalLM(config), 2);
        var ids = Ids(config.VocabSize, 11, 2);
        var expected = Reference.Llama(model.state_dict(), config, ids, Reference.DefaultInvFreq(config.HeadDim, config.RopeTheta));
        TensorAssert.Close(expected, Logits(model, ids), 1e-4, "Llama logits");
    }

    [Fact]
    public void Qwen2WithBiasesAndTiedHeadMatchesExplicitComputation()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var config = TinyModels.Qwen2();
        using var model = TinyModels.Randomize(new Qwen2ForCausalLM(config), 3);
        var names = model.state_dict().Keys.ToList();
        Assert.Contains("model.layers.0.self_attn.q_proj.bias", names);
        Assert.DoesNotContain("model.layers.0.self_attn.o_proj.bias", names);
        Assert.DoesNotContain("lm_head.weight", names);
        var ids = Ids(config.VocabSize, 10, 3);
        var expected = Reference.Llama(model.state_dict(), config, ids, Reference.DefaultInvFreq(config.HeadDim, config.RopeTheta));
        TensorAssert.Close(expected, Logits(model, ids), 1e-4, "Qwen2 logits");
    }

    [Fact]
    public void MistralSlidingWindowMatchesExplicitComputation()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var config = TinyModels.Llama(modelType: "mistral", slidingWindow: 3);
        using var model = TinyModels.Randomize(new LlamaForCausalLM(config), 4);
        var ids = Ids(config.VocabSize, 8, 4);
        var expected = Reference.Llama(model.state_dict(), config, ids, Reference.DefaultInvFreq(config.HeadDim, config.RopeTheta),
            visible: (i, j) => j <= i && i - j < 3);
        TensorAssert.Close(expected, Logits(model, ids), 1e-4, "Mistral logits");
    }

    [Theory]
    [InlineData("linear")]
    [InlineData("llama3")]
    [InlineData("yarn")]
    public void ScaledRopeMatchesExplicitComputation(string kind)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var scaling = kind switch
        {
            "linear" => new RopeScaling { RopeType = "linear", Factor = 2 },
            "llama3" => new RopeScaling { RopeType = "llama3", Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 16 },
            _ => new RopeScaling { RopeType = "yarn", Factor = 4, OriginalMaxPositionEmbeddings = 16 },
        };
        var config = TinyModels.Llama(scaling);
        using var model = TinyModels.Randomize(new LlamaForCausalLM(config), 5);
        var (invFreq, attentionFactor) = RotaryEmbedding.ComputeInverseFrequencies(config.HeadDim, config.RopeTheta, scaling, config.MaxPositionEmbeddings);
        var ids = Ids(config.VocabSize, 7, 5);
        TensorAssert.Close(Reference.Llama(model.state_dict(), config, ids, invFreq, attentionFactor), Logits(model, ids), 1e-4, $"{kind} logits");
    }

    [Fact]
    public void BertMatchesExplicitComputationWithPadding()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var config = TinyModels.Bert();
        using var model = TinyModels.Randomize(new BertModel(config), 6);
        var ids = Ids(config.VocabSize, 7, 6);
        long[] mask = [1, 1, 1, 1, 1, 0, 0];
        long[] types = [0, 0, 0, 1, 1, 0, 0];
        using var _ = no_grad();
        using var output = model.Forward(tensor(ids).unsqueeze(0), tensor(mask).unsqueeze(0), tensor(types).unsqueeze(0));
        var (hidden, pooled) = Reference.Bert(model.state_dict(), config, ids, mask, types);
        TensorAssert.Close(hidden, output.LastHiddenState.squeeze(0), 1e-4, "BERT hidden states");
        TensorAssert.Close(pooled, output.PoolerOutput!.squeeze(0), 1e-4, "BERT pooler output");
    }

    public static TheoryData<string> CausalFamilies => ["gpt2", "llama", "qwen2", "mistral"];

    private static CausalLanguageModel Create(string family, long seed) => family switch
    {
        "gpt2" => TinyModels.Randomize(new Gpt2ForCausalLM(TinyModels.Gpt2()), seed),
        "llama" => TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), seed),
        "qwen2" => TinyModels.Randomize(new Qwen2ForCausalLM(TinyModels.Qwen2()), seed),
        "mistral" => TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama(modelType: "mistral", slidingWindow: 4)), seed),
        _ => throw new ArgumentException(family),
    };

    [Theory]
    [MemberData(nameof(CausalFamilies))]
    public void ChangingAFutureTokenNeverChangesEarlierLogits(string family)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Create(family, 7);
        var ids = Ids(model.Config.VocabSize, 12, 7);
        var changed = (long[])ids.Clone();
        changed[8] = (changed[8] + 1) % model.Config.VocabSize;
        changed[11] = (changed[11] + 5) % model.Config.VocabSize;
        using var a = Logits(model, ids);
        using var b = Logits(model, changed);
        TensorAssert.Close(a.narrow(0, 0, 8), b.narrow(0, 0, 8), 1e-6, "logits before the change");
        Assert.True((a.narrow(0, 8, 4) - b.narrow(0, 8, 4)).abs().max().item<float>() > 1e-3, "later logits should change");
    }

    [Theory]
    [MemberData(nameof(CausalFamilies))]
    public void KvCacheLogitsEqualFullRecompute(string family)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Create(family, 8);
        var ids = Ids(model.Config.VocabSize, 10, 8);
        using var full = Logits(model, ids);
        using var cache = model.CreateCache();
        using var _ = no_grad();
        var steps = new List<Tensor> { model.Forward(tensor(ids[..4]).unsqueeze(0), cache: cache).squeeze(0) };
        for (int t = 4; t < ids.Length; t++)
            steps.Add(model.Forward(tensor(ids[t..(t + 1)]).unsqueeze(0), cache: cache).squeeze(0));
        Assert.Equal(ids.Length, cache.Length);
        TensorAssert.Close(full, cat(steps, 0), 1e-5, "cached logits");
    }

    [Theory]
    [MemberData(nameof(CausalFamilies))]
    public void LeftPaddedBatchWithCacheEqualsEachSequenceAlone(string family)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Create(family, 9);
        long vocab = model.Config.VocabSize;
        var shortIds = Ids(vocab, 4, 9);
        var longIds = Ids(vocab, 7, 10);
        using var shortAlone = Logits(model, [.. shortIds, 5, 6]);
        using var longAlone = Logits(model, [.. longIds, 5, 6]);

        using var _ = no_grad();
        using var cache = model.CreateCache();
        var batch = tensor(new long[] { 0, 0, 0 }.Concat(shortIds).Concat(longIds).ToArray()).view(2, 7);
        var mask = tensor(new long[] { 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 }).view(2, 7);
        var prompt = model.Forward(batch, mask, cache: cache);
        var extendedMask = cat([mask, ones(2, 1, ScalarType.Int64)], 1);
        var step1 = model.Forward(full(2, 1, 5L), extendedMask, cache: cache);
        extendedMask = cat([extendedMask, ones(2, 1, ScalarType.Int64)], 1);
        var step2 = model.Forward(full(2, 1, 6L), extendedMask, cache: cache);

        TensorAssert.Close(shortAlone.narrow(0, 0, 4), prompt[0].narrow(0, 3, 4), 1e-5, "padded prompt logits");
        TensorAssert.Close(longAlone.narrow(0, 0, 7), prompt[1], 1e-5, "unpadded prompt logits");
        TensorAssert.Close(shortAlone.narrow(0, 4, 2), cat([step1[0], step2[0]], 0), 1e-5, "padded row's cached steps");
        TensorAssert.Close(longAlone.narrow(0, 7, 2), cat([step1[1], step2[1]], 0), 1e-5, "unpadded row's cached steps");
    }

    [Fact]
    public void BertPaddingDoesNotChangeRealTokens()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = TinyModels.Randomize(new BertModel(TinyModels.Bert()), 11);
        using var _ = no_grad();
        var ids = Ids(89, 5, 11);
        using var alone = model.Forward(tensor(ids).unsqueeze(0));
        using var padded = model.Forward(tensor(ids.Concat(new long[] { 0, 0, 0 }).ToArray()).unsqueeze(0), tensor(new long[] { 1, 1, 1, 1, 1, 0, 0, 0 }).unsqueeze(0));
        TensorAssert.Close(alone.LastHiddenState, padded.LastHiddenState.narrow(1, 0, 5), 1e-5, "hidden states with padding");
        TensorAssert.Close(alone.PoolerOutput!, padded.PoolerOutput!, 1e-5, "pooled output with padding");
    }

    [Fact]
    public void ExplicitAttentionEqualsLibraryAttentionForEveryMaskKind()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var g = new Generator(12);
        var q = randn([2, 4, 6, 8], generator: g);
        var k = randn([2, 2, 6, 8], generator: g);
        var v = randn([2, 2, 6, 8], generator: g);
        var padding = tensor(new long[] { 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1 }).view(2, 6);
        foreach (var (mask, visible) in new (AttentionMask, Func<int, int, int, bool>)[]
        {
            (AttentionMask.Causal(6, 0, null, null, ScalarType.Float32, CPU), (_, i, j) => j <= i),
            (AttentionMask.Causal(6, 0, padding, null, ScalarType.Float32, CPU), (b, i, j) => j <= i && (b == 1 || j > 0)),
            (AttentionMask.Causal(6, 0, null, 2, ScalarType.Float32, CPU), (_, i, j) => j <= i && i - j < 2),
            (AttentionMask.Padding(padding, ScalarType.Float32, CPU), (b, _, j) => b == 1 || j > 0),
        })
        {
            using var fused = Attention.ScaledDotProduct(q, k, v, mask);
            // Inside a training step's dropout scope the same attention is computed step by step (dropout so small that
            // nothing is dropped): both spellings must agree.
            using (StepDropout.Begin(1, CPU))
            using (var spelledOut = Attention.ScaledDotProduct(q, k, v, mask, dropout: 1e-12))
                TensorAssert.Close(fused, spelledOut, 1e-5, "attention spelled out inside a dropout scope");
            var actual = fused;
            for (int b = 0; b < 2; b++)
            {
                var qm = Reference.ToMatrix(q[b].transpose(0, 1).reshape(6, 32));
                var km = Reference.ToMatrix(k[b].transpose(0, 1).reshape(6, 16));
                var vm = Reference.ToMatrix(v[b].transpose(0, 1).reshape(6, 16));
                int bb = b;
                var expected = Reference.Attention(qm, km, vm, 4, 2, (i, j) => visible(bb, i, j), 1 / Math.Sqrt(8));
                var rows = Enumerable.Range(0, 6).Where(i => Enumerable.Range(0, 6).Any(j => visible(bb, i, j))).ToArray();
                var actualRows = actual[b].transpose(0, 1).reshape(6, 32).index_select(0, tensor(rows.Select(r => (long)r).ToArray()));
                var expectedRows = Reference.FromMatrix(expected).index_select(0, tensor(rows.Select(r => (long)r).ToArray()));
                TensorAssert.Close(expectedRows, actualRows, 1e-5, "attention output");
            }
            mask.Dispose();
        }
    }
}
