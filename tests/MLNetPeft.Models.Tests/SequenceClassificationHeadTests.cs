using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

/// <summary>The sequence-classification (reward) head on causal models: HF's layout, and the score read at the last real token.</summary>
public class SequenceClassificationHeadTests
{
    private const long Pad = 2;   // the pad token is the eos token, as in most causal tokenizers

    private static CausalLanguageModel Backbone(string family) => family switch
    {
        "gpt2" => TinyModels.Randomize(new Gpt2ForCausalLM(TinyModels.Gpt2()), 1),
        "llama" => TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama()), 1),
        "qwen2" => TinyModels.Randomize(new Qwen2ForCausalLM(TinyModels.Qwen2()), 1),
        _ => throw new ArgumentOutOfRangeException(nameof(family)),
    };

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    public void TheScoreIsReadAtTheLastRealTokenWhicheverSideIsPadded(string family)
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = new CausalLmForSequenceClassification(Backbone(family), numLabels: 1, padTokenId: (int)Pad, seed: 3);
        model.eval();
        // The second row ends in the pad/eos token itself: it is a real token and is where that row's score is read.
        long[][] rows = [[5, 9, 14, 20, 7], [11, 3, Pad], [4, 8, 15, 16, 23, 42, 17]];
        int longest = rows.Max(r => r.Length);
        using var _ = no_grad();

        // The reference: each row alone, its last hidden state times score.weight.
        var alone = rows.Select(r =>
        {
            var ids = tensor(r, [1, r.Length]);
            var hidden = model.Backbone.HiddenStates(ids, ones_like(ids));
            return hidden[0, r.Length - 1].matmul(model.get_parameter("score.weight")!.t());
        }).ToArray();

        foreach (bool left in new[] { false, true })
        {
            var ids = full(rows.Length, longest, Pad, ScalarType.Int64);
            var mask = zeros(rows.Length, longest, ScalarType.Int64);
            for (int b = 0; b < rows.Length; b++)
            {
                int start = left ? longest - rows[b].Length : 0;
                ids[b, TensorIndex.Slice(start, start + rows[b].Length)] = tensor(rows[b]);
                mask[b, TensorIndex.Slice(start, start + rows[b].Length)] = ones(rows[b].Length, ScalarType.Int64);
            }
            var scores = model.Forward(ids, mask);
            Assert.Equal([rows.Length, 1L], scores.shape);
            Assert.Equal(rows.Select(r => (long)r.Length - 1 + (left ? longest - r.Length : 0)), CausalLmForSequenceClassification.LastRealToken(mask).data<long>().ToArray());
            for (int b = 0; b < rows.Length; b++)
                TensorAssert.Close(alone[b], scores[b], 1e-5, $"{family} row {b} {(left ? "left" : "right")}-padded");
        }
        var empty = zeros(1, 3, ScalarType.Int64);
        Assert.Contains("no real token", Assert.Throws<ArgumentException>(() => model.Forward(ones(1, 3, ScalarType.Int64), empty)).Message);
    }

    [Theory]
    [InlineData("gpt2", "GPT2ForSequenceClassification", "transformer.")]
    [InlineData("llama", "LlamaForSequenceClassification", "model.")]
    [InlineData("qwen2", "Qwen2ForSequenceClassification", "model.")]
    public void ParametersAndConfigAreThoseOfHfsSequenceClassificationClass(string family, string architecture, string prefix)
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        using var lm = Backbone(family);
        var lmNames = lm.state_dict().Keys.ToHashSet();
        using var model = new CausalLmForSequenceClassification(lm, numLabels: 1, padTokenId: (int)Pad);
        var names = model.state_dict().Keys.ToList();
        Assert.Equal(lmNames.Where(n => !n.StartsWith("lm_head.", StringComparison.Ordinal)).Append("score.weight").Order(), names.Order());
        Assert.All(names.Where(n => n != "score.weight"), n => Assert.StartsWith(prefix, n));
        Assert.Equal([1L, lm.HiddenSize], model.get_parameter("score.weight")!.shape);
        // The modules are the backbone's own, not copies.
        Assert.Same(lm.get_parameter(names.First(n => n != "score.weight")), model.get_parameter(names.First(n => n != "score.weight")));

        using var dir = new TempFolder();
        model.SavePretrained(dir.Path);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir.Path, "config.json")))!.AsObject();
        Assert.Equal(architecture, config["architectures"]![0]!.GetValue<string>());
        Assert.Equal(family, config["model_type"]!.GetValue<string>());
        Assert.Equal("LABEL_0", config["id2label"]!["0"]!.GetValue<string>());
        Assert.Single(config["id2label"]!.AsObject());
        Assert.Equal(Pad, config["pad_token_id"]!.GetValue<long>());
        // The backbone's own config is untouched.
        Assert.NotEqual(architecture, lm.Config.Architectures?.FirstOrDefault());
    }
}
