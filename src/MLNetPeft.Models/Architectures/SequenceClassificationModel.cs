using System.Text.Json;
using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace MLNetPeft.Architectures;

/// <summary>
/// A model that maps a padded batch of token ids to one row of logits per sequence, in HF's
/// <c>…ForSequenceClassification</c> layout (the encoder's or backbone's modules under their own names and a head).
/// With one label it is a reward model: what the reward trainer and the PPO critic need of it is only this.
/// </summary>
public abstract class SequenceClassificationModel : PretrainedModule
{
    protected SequenceClassificationModel(string name) : base(name) { }

    /// <summary>Outputs of the head (1 for a reward model).</summary>
    public abstract int NumLabels { get; }

    /// <summary>The id that fills padded positions (the config's pad_token_id, or 0); the attention mask hides it.</summary>
    public int PaddingId => Config.PadTokenId ?? 0;

    /// <summary>Logits [batch, num_labels] of token ids [batch, seq] (int64) with their attention mask (1 = real token).</summary>
    public abstract Tensor Forward(Tensor inputIds, Tensor attentionMask);

    /// <summary>
    /// <paramref name="baseConfig"/> as HF writes it for the classifier: the class in <c>architectures</c>, id2label and
    /// label2id of <paramref name="numLabels"/> entries, and <paramref name="padTokenId"/> when given.
    /// </summary>
    protected static ModelConfig ClassifierConfig(ModelConfig baseConfig, string architecture, int numLabels, int? padTokenId)
    {
        var json = JsonNode.Parse(baseConfig.ToJson())!.AsObject();
        json["architectures"] = new JsonArray(architecture);
        var id2label = new JsonObject();
        var label2id = new JsonObject();
        for (int i = 0; i < numLabels; i++)
        {
            id2label[i.ToString(System.Globalization.CultureInfo.InvariantCulture)] = $"LABEL_{i}";
            label2id[$"LABEL_{i}"] = i;
        }
        json["id2label"] = id2label;
        json["label2id"] = label2id;
        if (padTokenId is { } pad) json["pad_token_id"] = pad;
        return (ModelConfig)JsonSerializer.Deserialize(json.ToJsonString(), baseConfig.GetType(), ModelConfig.JsonOptions)!;
    }
}
