using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.PTuning;

/// <summary>
/// P-Tuning applied to a causal LM or a BERT encoder: a prompt encoder (<c>prompt_encoder.{adapter}</c>: an embedding of the virtual
/// tokens fed through an MLP, or a bidirectional LSTM and an MLP) produces the virtual token embeddings on every call.
/// </summary>
public sealed class PTuningModel : PromptLearningModel
{
    private readonly Func<Tensor> _encode;

    private PTuningModel(IPromptableModel model, PTuningConfig config, nn.Module encoder, Func<Tensor> encode, string adapterName)
        : base(model, config, encoder, adapterName)
    {
        _encode = encode;
        Install(new PrependedPrompt(config.NumVirtualTokens, encode));
    }

    public new PTuningConfig Config => (PTuningConfig)base.Config;

    public static PTuningModel Apply(IPromptableModel model, PTuningConfig config, string adapterName = "default", long seed = 0) =>
        Scoped(AsModule(model), () => ApplyCore(model, config, adapterName, seed));

    private static PTuningModel ApplyCore(IPromptableModel model, PTuningConfig config, string adapterName = "default", long seed = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        int dim = ModelGeometry.Of(model).HiddenSize, hidden = config.EncoderHiddenSize ?? dim;
        var (dtype, device) = Placement(model);
        // Every initial value comes from the caller's seed, in PEFT's layer order (embedding, LSTM, MLP).
        var generator = new Generator((ulong)seed);
        var embedding = LayerInit.Reset(nn.Embedding(config.NumVirtualTokens, dim, dtype: dtype), generator);
        nn.Module encoder;
        Func<Tensor> encode;
        if (config.EncoderReparameterizationType == PromptEncoderType.Mlp)
        {
            var mlp = LayerInit.Reset(nn.Sequential(("0", nn.Linear(dim, hidden, dtype: dtype)), ("1", nn.ReLU()), ("2", nn.Linear(hidden, hidden, dtype: dtype)),
                ("3", nn.ReLU()), ("4", nn.Linear(hidden, dim, dtype: dtype))), generator);
            encoder = new Container("PromptEncoder", ("embedding", embedding), ("mlp_head", mlp));
            encode = () => mlp.call(embedding.weight!);
        }
        else
        {
            var lstm = new PromptEncoderLstm(dim, hidden, config.EncoderNumLayers, config.EncoderDropout, dtype, generator);
            var mlp = LayerInit.Reset(nn.Sequential(("0", nn.Linear(2 * hidden, 2 * hidden, dtype: dtype)), ("1", nn.ReLU()), ("2", nn.Linear(2 * hidden, dim, dtype: dtype))), generator);
            encoder = new Container("PromptEncoder", ("embedding", embedding), ("lstm_head", lstm), ("mlp_head", mlp));
            encode = () => mlp.call(lstm.call(embedding.weight!.unsqueeze(0))[0]);
        }
        encoder.to(device);
        return new PTuningModel(model, config, encoder, encode, adapterName);
    }

    /// <summary>Loads PEFT's saved <c>prompt_embeddings</c> (the encoder's output) as a frozen-encoder prompt.</summary>
    internal static PromptLearningModel Load(IPromptableModel model, string folder, JsonObject json, string path, string adapterName)
    {
        var config = new PTuningConfig { NumVirtualTokens = PeftAdapterFiles.Number(json, "num_virtual_tokens", path, 0) };
        config.Validate();
        int dim = ModelGeometry.Of(model).HiddenSize;
        CheckPromptEmbeddings(folder, config.NumVirtualTokens, dim);
        var (dtype, device) = Placement(model);
        var embedding = nn.Embedding(config.NumVirtualTokens, dim, dtype: dtype, device: device);
        using (no_grad()) embedding.weight!.copy_(ReadPromptEmbeddings(folder, config.NumVirtualTokens, dim));
        return new PTuningModel(model, config, new Container("PromptEncoder", ("embedding", embedding)), () => embedding.weight!, adapterName);
    }

    public override Tensor PromptEmbeddings() => _encode();
}
