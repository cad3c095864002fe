using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.BaseModel;
using MLNetPeft.Generation;
using MLNetPeft.ML.Generation;
using static TorchSharp.torch;

namespace MLNetPeft.ML.Tests;

public class ScoreColumnTests
{
    public sealed class Row
    {
        public string Prompt { get; set; } = "";
        public string Response { get; set; } = "";
    }

    public sealed class Scored
    {
        public string GeneratedText { get; set; } = "";
        public float LogLikelihood { get; set; }
        public float Perplexity { get; set; }
    }

    private static readonly Row[] Rows =
    [
        new() { Prompt = "Count from 3 to 7:", Response = " 3, 4, 5, 6, 7." },
        new() { Prompt = "Count from 3 to 7:", Response = " cat dog bird." },
    ];

    [Fact]
    public void ScoreColumnsHoldTheResponseLogLikelihoodAndPerplexityAndSurviveSaveLoad()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var dir = new TempFolder();
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows);
        using var model = BundledBaseModel.Load();
        var tokenizer = BundledBaseModel.LoadTokenizer();
        var fitted = ml.Transforms.Text.GenerateText(model, tokenizer, options: new GenerationOptions { MaxNewTokens = 4 }, scoredResponseColumnName: "Response").Fit(data);
        var output = fitted.Transform(data);
        var logLikelihood = output.GetColumn<float>("LogLikelihood").ToList();
        var perplexity = output.GetColumn<float>("Perplexity").ToList();

        for (int i = 0; i < Rows.Length; i++)
        {
            // Teacher forcing written out: log p(response tokens, eos | prompt).
            var prompt = tokenizer.Encode(Rows[i].Prompt);
            var response = tokenizer.Encode(Rows[i].Response, addSpecialTokens: false).Append(tokenizer.EosId!.Value).ToList();
            var ids = prompt.Concat(response).Select(t => (long)t).ToArray();
            using var _ = no_grad();
            var logProbs = model.Forward(tensor(ids).unsqueeze(0))[0].log_softmax(-1);
            double expected = Enumerable.Range(0, response.Count).Sum(j => logProbs[prompt.Count - 1 + j, response[j]].item<float>());
            Assert.Equal(expected, logLikelihood[i], 2);
            Assert.Equal(Math.Exp(-expected / response.Count), perplexity[i], 2);
        }
        Assert.True(perplexity[0] < perplexity[1], "the counting continuation should be far more likely than nonsense");

        var path = dir.File("scored.zip");
        ml.Model.Save(fitted, data.Schema, path);
        var fresh = new MLContext(seed: 2);
        var loaded = fresh.Model.Load(path, out _);
        var prediction = fresh.Model.CreatePredictionEngine<Row, Scored>(loaded).Predict(Rows[0]);
        Assert.Equal(logLikelihood[0], prediction.LogLikelihood, 4);
        Assert.Equal(perplexity[0], prediction.Perplexity, 4);
    }
}
