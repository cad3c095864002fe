using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.TorchSharp;
using MLNetPeft.ML.Classification;

// ML.NET's own text classification (Microsoft.ML.TorchSharp, which downloads its weights at run time). Swapping
// `TextClassification(` for `PeftTextClassification(` is the whole change that moves this app to MLNetPeft's LoRA
// classifier on the bundled all-MiniLM-L6-v2: the options and the column names are the same
// (eng/test-packages.sh makes exactly that change and runs the result offline).
static class Classify
{
    sealed class Review
    {
        public string Text { get; set; } = "";
        public string Label { get; set; } = "";
    }

    public static int Run()
    {
        var ml = new MLContext(seed: 1);
        string[] good = ["a delight from start to finish", "warm, funny and moving", "the best film of the year", "beautifully acted", "I loved every minute"];
        string[] bad = ["a boring, tedious mess", "I hated every minute of it", "painfully unfunny", "a waste of time and money", "badly made"];
        var rows = Enumerable.Range(0, 4).SelectMany(_ => good.Select(t => new Review { Text = t, Label = "positive" })
            .Concat(bad.Select(t => new Review { Text = t, Label = "negative" }))).ToArray();
        var data = ml.Data.LoadFromEnumerable(rows);
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.MulticlassClassification.Trainers.TextClassification(labelColumnName: "Label", sentence1ColumnName: "Text", batchSize: 8, maxEpochs: 4))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
        var model = pipeline.Fit(data);
        var metrics = ml.MulticlassClassification.Evaluate(model.Transform(data));
        Console.WriteLine($"Text classification: training accuracy {metrics.MacroAccuracy:P0}.");
        return metrics.MacroAccuracy > 0.5 ? 0 : 1;
    }
}
