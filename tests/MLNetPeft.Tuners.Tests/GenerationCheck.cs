using MLNetPeft.Architectures;
using MLNetPeft.Generation;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Tests;

/// <summary>Generation through an adapted model: the KV-cached generator must pick the same tokens as full recomputation.</summary>
internal static class GenerationCheck
{
    public static void CachedEqualsRecomputed(CausalLanguageModel model, string prompt = "abc de", int tokens = 6)
    {
        var tokenizer = TinyTokenizer.Create();
        model.eval();
        var generated = new TextGenerator(model, tokenizer).Generate(prompt, new GenerationOptions { MaxNewTokens = tokens, StopTokenIds = [] });
        var ids = tokenizer.Encode(prompt).Select(i => (long)i).ToList();
        using var _ = no_grad();
        var expected = new List<int>();
        for (int i = 0; i < generated.TokenIds.Count; i++)
        {
            var logits = model.Forward(tensor(ids.ToArray()).unsqueeze(0));
            int next = (int)logits[0, -1].argmax().item<long>();
            expected.Add(next);
            ids.Add(next);
        }
        Assert.NotEmpty(generated.TokenIds);
        Assert.Equal(expected, generated.TokenIds);
    }
}
