using MLNetPeft.Runtime;
using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using MLNetPeft.Tokenization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.PromptTuning;

/// <summary>Prompt tuning applied to a causal LM or a BERT encoder (or a classifier over one): <c>prompt_encoder.{adapter}.embedding.weight</c> [virtual tokens, hidden] trains.</summary>
public sealed class PromptTuningModel : PromptLearningModel
{
    private readonly Embedding _embedding;

    private PromptTuningModel(IPromptableModel model, PromptTuningConfig config, Embedding embedding, string adapterName)
        : base(model, config, new Container("PromptEmbedding", ("embedding", embedding)), adapterName)
    {
        _embedding = embedding;
        Install(new PrependedPrompt(config.NumVirtualTokens, () => _embedding.weight!));
    }

    public new PromptTuningConfig Config => (PromptTuningConfig)base.Config;
    public Parameter Embeddings => _embedding.weight!;

    /// <summary>
    /// Adds <see cref="PromptLearningConfig.NumVirtualTokens"/> trainable virtual tokens before every input of
    /// <paramref name="model"/>. <paramref name="tokenizer"/> is needed for <see cref="PromptTuningInit.Text"/>.
    /// </summary>
    public static PromptTuningModel Apply(IPromptableModel model, PromptTuningConfig config, TextTokenizer? tokenizer = null,
        string adapterName = "default", long seed = 0) =>
        Scoped(AsModule(model), () => ApplyCore(model, config, tokenizer, adapterName, seed));

    private static PromptTuningModel ApplyCore(IPromptableModel model, PromptTuningConfig config, TextTokenizer? tokenizer = null,
        string adapterName = "default", long seed = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        var geometry = ModelGeometry.Of(model);
        Tensor wordEmbeddings;
        var device = AsModule(model).parameters().First().device;
        using (no_grad()) wordEmbeddings = model.Embed(Scalars.Range(0, model.Config.VocabSize, device).unsqueeze(0))[0];   // [vocab, hidden]
        var embedding = nn.Embedding(config.NumVirtualTokens, geometry.HiddenSize, dtype: wordEmbeddings.dtype, device: device);
        var generator = new Generator((ulong)seed);
        using (no_grad())
        {
            switch (config.PromptTuningInit)
            {
                case PromptTuningInit.Random:
                    embedding.weight!.normal_(0, 1, generator);
                    break;
                case PromptTuningInit.SampleVocab:
                    embedding.weight!.copy_(wordEmbeddings.index_select(0, randint(0, model.Config.VocabSize, [config.NumVirtualTokens], generator: generator).to(device)));
                    break;
                case PromptTuningInit.Text:
                    if (tokenizer is null) throw new ArgumentNullException(nameof(tokenizer), "prompt_tuning_init TEXT needs the tokenizer.");
                    var ids = tokenizer.Encode(config.PromptTuningInitText!);
                    // PEFT repeats a short text and cuts a long one to the number of virtual tokens.
                    var chosen = Enumerable.Range(0, config.NumVirtualTokens).Select(i => (long)ids[i % ids.Count]).ToArray();
                    embedding.weight!.copy_(wordEmbeddings.index_select(0, tensor(chosen, device: device)));
                    break;
            }
        }
        wordEmbeddings.Dispose();
        return new PromptTuningModel(model, config, embedding, adapterName);
    }

    internal static PromptTuningModel Load(IPromptableModel model, string folder, JsonObject json, string path, string adapterName)
    {
        var config = new PromptTuningConfig { NumVirtualTokens = PeftAdapterFiles.Number(json, "num_virtual_tokens", path, 0) };
        config.Validate();
        var geometry = ModelGeometry.Of(model);
        CheckPromptEmbeddings(folder, config.NumVirtualTokens, geometry.HiddenSize);
        var (dtype, device) = Placement(model);
        var embedding = nn.Embedding(config.NumVirtualTokens, geometry.HiddenSize, dtype: dtype, device: device);
        using (no_grad()) embedding.weight!.copy_(ReadPromptEmbeddings(folder, config.NumVirtualTokens, geometry.HiddenSize));
        return new PromptTuningModel(model, config, embedding, adapterName);
    }

    public override Tensor PromptEmbeddings() => _embedding.weight!;
}
