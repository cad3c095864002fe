using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.PrefixTuning;

/// <summary>
/// Prefix tuning applied to a causal LM or a BERT encoder. The encoder (<c>prompt_encoder.{adapter}</c>: <c>embedding</c>
/// [virtual tokens, layers·2·token_dim], or with the projection <c>embedding</c> [virtual tokens, token_dim] and
/// <c>transform</c>) yields, per layer, keys and values [kvHeads, virtual tokens, headDim] that the model's attention
/// sees as cached positions before the input (PEFT's past_key_values layout; token_dim = kvHeads·headDim).
/// </summary>
public sealed class PrefixTuningModel : PromptLearningModel
{
    private readonly Func<Tensor> _encode;

    private PrefixTuningModel(IPromptableModel model, PrefixTuningConfig config, nn.Module encoder, Func<Tensor> encode, string adapterName)
        : base(model, config, encoder, adapterName)
    {
        _encode = encode;
        Install(new PrefixPrompt(this));
    }

    public new PrefixTuningConfig Config => (PrefixTuningConfig)base.Config;
    protected override int TokenDim => Geometry.KeyValueHeads * Geometry.HeadDim;
    protected override int AttentionHeadsInConfig => Geometry.KeyValueHeads;
    private int Width => Geometry.Layers * 2 * TokenDim;

    public static PrefixTuningModel Apply(IPromptableModel model, PrefixTuningConfig config, string adapterName = "default", long seed = 0) =>
        Scoped(AsModule(model), () => ApplyCore(model, config, adapterName, seed));

    private static PrefixTuningModel ApplyCore(IPromptableModel model, PrefixTuningConfig config, string adapterName = "default", long seed = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        var g = ModelGeometry.Of(model);
        int tokenDim = g.KeyValueHeads * g.HeadDim, width = g.Layers * 2 * tokenDim;
        var (dtype, device) = Placement(model);
        // Every initial value comes from the caller's seed, in PEFT's layer order (embedding, then the projection).
        var generator = new Generator((ulong)seed);
        if (!config.PrefixProjection)
        {
            var embedding = LayerInit.Reset(nn.Embedding(config.NumVirtualTokens, width, dtype: dtype), generator);
            embedding.to(device);
            return new PrefixTuningModel(model, config, new Container("PrefixEncoder", ("embedding", embedding)), () => embedding.weight!, adapterName);
        }
        int hidden = config.EncoderHiddenSize ?? tokenDim;
        var small = LayerInit.Reset(nn.Embedding(config.NumVirtualTokens, tokenDim, dtype: dtype), generator);
        var transform = LayerInit.Reset(nn.Sequential(("0", nn.Linear(tokenDim, hidden, dtype: dtype)), ("1", nn.Tanh()), ("2", nn.Linear(hidden, width, dtype: dtype))), generator);
        var encoder = new Container("PrefixEncoder", ("embedding", small), ("transform", transform));
        encoder.to(device);
        return new PrefixTuningModel(model, config, encoder, () => transform.call(small.weight!), adapterName);
    }

    /// <summary>Loads PEFT's saved <c>prompt_embeddings</c> (the prefix, projected) as a prefix without projection.</summary>
    internal static PrefixTuningModel Load(IPromptableModel model, string folder, JsonObject json, string path, string adapterName)
    {
        var config = new PrefixTuningConfig { NumVirtualTokens = PeftAdapterFiles.Number(json, "num_virtual_tokens", path, 0) };
        config.Validate();
        var g = ModelGeometry.Of(model);
        int width = g.Layers * 2 * g.KeyValueHeads * g.HeadDim;
        CheckPromptEmbeddings(folder, config.NumVirtualTokens, width);
        var (dtype, device) = Placement(model);
        var embedding = nn.Embedding(config.NumVirtualTokens, width, dtype: dtype, device: device);
        using (no_grad()) embedding.weight!.copy_(ReadPromptEmbeddings(folder, config.NumVirtualTokens, width));
        return new PrefixTuningModel(model, config, new Container("PrefixEncoder", ("embedding", embedding)), () => embedding.weight!, adapterName);
    }

    public override Tensor PromptEmbeddings() => _encode();

    /// <summary>Per layer (key, value) [batch, kvHeads, P, headDim] from the encoder output [P, layers·2·kvHeads·headDim].</summary>
    private IReadOnlyList<(Tensor, Tensor)> KeysAndValues(long batch, ScalarType dtype, Device device)
    {
        var g = Geometry;
        int p = Config.NumVirtualTokens;
        var all = _encode().to(dtype, device).view(p, g.Layers * 2, g.KeyValueHeads, g.HeadDim).permute(1, 2, 0, 3);   // [layers·2, kvHeads, P, headDim]
        return Enumerable.Range(0, g.Layers)
            .Select(layer => (all[2 * layer].unsqueeze(0).expand(batch, -1, -1, -1), all[2 * layer + 1].unsqueeze(0).expand(batch, -1, -1, -1)))
            .ToList();
    }

    private sealed class PrefixPrompt(PrefixTuningModel owner) : VirtualPrompt
    {
        public override int Length => owner.Config.NumVirtualTokens;

        public override IReadOnlyList<(Tensor Key, Tensor Value)>? PastKeyValues(long batch, ScalarType dtype, Device device) =>
            owner.KeysAndValues(batch, dtype, device);
    }
}
