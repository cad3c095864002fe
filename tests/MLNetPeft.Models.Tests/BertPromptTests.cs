using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

/// <summary>Virtual prompts on the BERT encoder: prepended embeddings and key/value prefixes, as HF BERT treats them.</summary>
public class BertPromptTests
{
    private sealed class FixedPrompt(Tensor? embeddings, IReadOnlyList<(Tensor, Tensor)>? prefix, int length) : VirtualPrompt
    {
        public override int Length => length;
        public override Tensor? InputEmbeddings(long batch, ScalarType dtype, Device device) => embeddings?.unsqueeze(0).expand(batch, -1, -1);
        public override IReadOnlyList<(Tensor Key, Tensor Value)>? PastKeyValues(long batch, ScalarType dtype, Device device) =>
            prefix?.Select(kv => (kv.Item1.expand(batch, -1, -1, -1), kv.Item2.expand(batch, -1, -1, -1))).ToList();
    }

    private static readonly long[] Virtual = [17, 40, 3];
    private static Tensor Ids() => tensor(new long[] { 2, 11, 25, 7, 3, 2, 30, 9, 3, 0 }).view(2, 5);
    private static Tensor Mask() => tensor(new long[] { 1, 1, 1, 1, 1, 1, 1, 1, 1, 0 }).view(2, 5);
    private static Tensor Types() => tensor(new long[] { 0, 0, 0, 1, 1, 0, 0, 1, 1, 0 }).view(2, 5);

    private static BertModel Encoder(int layers)
    {
        var config = TinyModels.Bert();
        config.NumHiddenLayers = layers;
        return TinyModels.Randomize(new BertModel(config, addPoolingLayer: true), 5);
    }

    [Fact]
    public void PrependedEmbeddingsOfRealTokensGiveTheStatesOfThoseTokensWrittenOut()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var bert = Encoder(2);
        bert.eval();
        using var _ = no_grad();
        var prefixIds = tensor(Virtual).unsqueeze(0).expand(2, -1);
        // Written out: the virtual tokens as real ones in front (type 0), the mask extended by ones.
        using var written = bert.Forward(cat([prefixIds, Ids()], 1), cat([ones(2, 3, ScalarType.Int64), Mask()], 1), cat([zeros(2, 3, ScalarType.Int64), Types()], 1));
        bert.VirtualPrompt = new FixedPrompt(bert.Embed(tensor(Virtual).unsqueeze(0))[0], null, 3);
        using var prompted = bert.Forward(Ids(), Mask(), Types());
        Assert.Equal([2L, 5, 32], prompted.LastHiddenState.shape);
        TensorAssert.Close(written.LastHiddenState.narrow(1, 3, 5), prompted.LastHiddenState, 1e-5, "real tokens' states");
        // The pooler reads the real [CLS] token, which saw the virtual ones.
        var cls = bert.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        using var expectedPooled = nn.functional.linear(written.LastHiddenState.select(1, 3), cls["pooler.dense.weight"], cls["pooler.dense.bias"]).tanh();
        TensorAssert.Close(expectedPooled, prompted.PoolerOutput!, 1e-5, "pooled [CLS]");

        bert.VirtualPrompt.Enabled = false;
        using var plain = bert.Forward(Ids(), Mask(), Types());
        bert.VirtualPrompt = null;
        using var none = bert.Forward(Ids(), Mask(), Types());
        TensorAssert.BitIdentical(none.LastHiddenState, plain.LastHiddenState, "a disabled prompt");
    }

    [Fact]
    public void AOneLayerPrefixOfTheTokensKeysAndValuesEqualsThoseTokensWrittenOut()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        // With one layer, the keys and values the written-out tokens would produce are exactly a prefix: the real
        // tokens then sit at positions 3.. (HF BERT counts past keys as positions) and attend to them.
        using var bert = Encoder(1);
        bert.eval();
        using var _ = no_grad();
        var prefixIds = tensor(Virtual).unsqueeze(0).expand(2, -1);
        using var written = bert.Forward(cat([prefixIds, Ids()], 1), cat([ones(2, 3, ScalarType.Int64), Mask()], 1), cat([zeros(2, 3, ScalarType.Int64), Types()], 1));
        var p = bert.named_parameters().ToDictionary(x => x.name, x => x.parameter);
        var embedded = nn.functional.layer_norm(
            bert.Embed(tensor(Virtual).unsqueeze(0)) + p["embeddings.position_embeddings.weight"].narrow(0, 0, 3) + p["embeddings.token_type_embeddings.weight"][0],
            [32], p["embeddings.LayerNorm.weight"], p["embeddings.LayerNorm.bias"], 1e-12);
        var key = Attention.SplitHeads(nn.functional.linear(embedded, p["encoder.layer.0.attention.self.key.weight"], p["encoder.layer.0.attention.self.key.bias"]), 4);
        var value = Attention.SplitHeads(nn.functional.linear(embedded, p["encoder.layer.0.attention.self.value.weight"], p["encoder.layer.0.attention.self.value.bias"]), 4);
        bert.VirtualPrompt = new FixedPrompt(null, [(key, value)], 3);
        using var prefixed = bert.Forward(Ids(), Mask(), Types());
        TensorAssert.Close(written.LastHiddenState.narrow(1, 3, 5), prefixed.LastHiddenState, 1e-5, "real tokens' states under a prefix");
    }

    [Fact]
    public void VirtualTokensCountAgainstThePositions()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var bert = Encoder(1);
        bert.VirtualPrompt = new FixedPrompt(zeros(38, 32), null, 38);
        var e = Assert.Throws<ArgumentException>(() => bert.Forward(Ids()));
        Assert.Contains("after 38 virtual tokens", e.Message);
        Assert.Contains("max_position_embeddings", e.Message);
    }
}
