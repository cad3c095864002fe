using MLNetPeft.Architectures;
using MLNetPeft.Generation;
using MLNetPeft.Tokenization;
using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

public class GenerationTests
{
    private static readonly TextTokenizer Tokenizer = TinyTokenizer.Create();

    public static TheoryData<string> Families => ["gpt2", "llama"];

    private static CausalLanguageModel Model(string family, long seed = 31) => family switch
    {
        "gpt2" => TinyModels.Randomize(new Gpt2ForCausalLM(TinyModels.Gpt2()), seed),
        _ => TinyModels.Randomize(new LlamaForCausalLM(TinyModels.Llama() is var c ? Resize(c) : null!), seed),
    };

    private static LlamaConfig Resize(LlamaConfig c) { c.VocabSize = TinyTokenizer.VocabSize; return c; }

    private static readonly string[] Prompts = ["Hello", "The cat sat on", "x", "1 + 2 ="];

    /// <summary>Greedy decoding the slow way: the whole sequence again at every step, no cache.</summary>
    private static List<int> GreedyWithoutCache(CausalLanguageModel model, IReadOnlyList<int> prompt, int newTokens, int eos)
    {
        var ids = prompt.ToList();
        var generated = new List<int>();
        using var _ = no_grad();
        for (int i = 0; i < newTokens; i++)
        {
            using var logits = model.Forward(tensor(ids.Select(t => (long)t).ToArray()).unsqueeze(0));
            int next = (int)logits[0, -1].argmax().item<long>();
            if (next == eos) break;
            ids.Add(next);
            generated.Add(next);
        }
        return generated;
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void GreedyWithKvCacheEqualsRecomputingEverything(string family)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Model(family);
        var generator = new TextGenerator(model, Tokenizer);
        int longest = 0;
        foreach (var prompt in Prompts)
        {
            var result = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 20 });
            Assert.Equal(GreedyWithoutCache(model, Tokenizer.Encode(prompt), 20, Tokenizer.EosId!.Value), result.TokenIds);
            longest = Math.Max(longest, result.TokenIds.Count);
        }
        Assert.True(longest >= 5, "the comparison should cover several generated tokens");
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void BatchedGenerationEqualsOnePromptAtATime(string family)
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Model(family);
        var generator = new TextGenerator(model, Tokenizer);
        var options = new GenerationOptions { MaxNewTokens = 16 };
        var batched = generator.Generate(Prompts, options);
        for (int i = 0; i < Prompts.Length; i++)
        {
            var alone = generator.Generate(Prompts[i], options);
            Assert.Equal(alone.TokenIds, batched[i].TokenIds);
            Assert.Equal(alone.Text, batched[i].Text);
        }
    }

    [Fact]
    public void GreedyIsDeterministicAndSeededSamplingRepeats()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Model("gpt2");
        var generator = new TextGenerator(model, Tokenizer);
        var greedy = new GenerationOptions { MaxNewTokens = 12 };
        Assert.Equal(generator.Generate("abc", greedy).TokenIds, generator.Generate("abc", greedy).TokenIds);

        GenerationOptions Sampling(long seed) => new() { MaxNewTokens = 24, DoSample = true, Temperature = 1.5, Seed = seed };
        var a = generator.Generate(Prompts, Sampling(7));
        var b = generator.Generate(Prompts, Sampling(7));
        var c = generator.Generate(Prompts, Sampling(8));
        Assert.Equal(a.Select(r => r.TokenIds), b.Select(r => r.TokenIds));
        Assert.NotEqual(a.Select(r => string.Join(",", r.TokenIds)), c.Select(r => string.Join(",", r.TokenIds)));

        var topOne = generator.Generate("abc", new GenerationOptions { MaxNewTokens = 12, DoSample = true, TopK = 1, Seed = 3 });
        Assert.Equal(generator.Generate("abc", greedy).TokenIds, topOne.TokenIds);
    }

    [Fact]
    public void StopStringsAndStopTokensEndGeneration()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Model("llama");
        var generator = new TextGenerator(model, Tokenizer);
        var free = generator.Generate("Hello", new GenerationOptions { MaxNewTokens = 12, StopTokenIds = [] });
        Assert.Equal(FinishReason.Length, free.FinishReason);
        Assert.Equal(12, free.TokenIds.Count);

        // The stop string is the text of generated tokens 4-5: output stops before it.
        var stop = Tokenizer.Decode(free.TokenIds.Skip(4).Take(2));
        int cut = free.Text.IndexOf(stop, StringComparison.Ordinal);
        var stopped = generator.Generate("Hello", new GenerationOptions { MaxNewTokens = 12, StopTokenIds = [], StopStrings = [stop] });
        Assert.Equal(FinishReason.StopString, stopped.FinishReason);
        Assert.Equal(free.Text[..cut], stopped.Text);
        Assert.True(stopped.TokenIds.Count < free.TokenIds.Count);

        // A stop token ends the row and is not part of the output.
        var byToken = generator.Generate("Hello", new GenerationOptions { MaxNewTokens = 12, StopTokenIds = [free.TokenIds[3]] });
        Assert.Equal(FinishReason.StopToken, byToken.FinishReason);
        int firstStop = free.TokenIds.ToList().IndexOf(free.TokenIds[3]);
        Assert.Equal(free.TokenIds.Take(firstStop), byToken.TokenIds);
    }

    [Fact]
    public void StreamingSeesEveryTokenAndTheWholeText()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Model("gpt2");
        var generator = new TextGenerator(model, Tokenizer);
        var seen = new List<GeneratedToken>();
        var results = generator.Generate(Prompts, new GenerationOptions { MaxNewTokens = 10 }, seen.Add);
        for (int row = 0; row < Prompts.Length; row++)
        {
            var mine = seen.Where(t => t.Row == row).ToList();
            Assert.Equal(results[row].TokenIds, mine.Select(t => t.TokenId));
            Assert.Equal(results[row].Text, string.Concat(mine.Select(t => t.TextDelta)));
        }
    }

    [Fact]
    public void CancellationStopsGeneration()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Model("gpt2");
        using var cts = new CancellationTokenSource();
        var generator = new TextGenerator(model, Tokenizer);
        int count = 0;
        Assert.ThrowsAny<OperationCanceledException>(() =>
            generator.Generate("abc", new GenerationOptions { MaxNewTokens = 30, StopTokenIds = [] }, _ => { if (++count == 3) cts.Cancel(); }, cts.Token));
        Assert.Equal(3, count);
    }

    [Fact]
    public void RepetitionPenaltyFollowsCtrl()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        var row = new TextGenerator.Row([0, 2], Tokenizer);
        var logits = tensor(new float[] { 2, 5, -1, 0.5f }).unsqueeze(0);
        var chosen = TextGenerator.ChooseTokens(logits, [row], new GenerationOptions { RepetitionPenalty = 2 }, new Generator(1));
        Assert.Equal([1], chosen);
        Assert.Equal(new float[] { 1, 5, -2, 0.5f }, logits[0].data<float>().ToArray());

        var favoured = tensor(new float[] { 9, 5, -1, 0.5f }).unsqueeze(0);
        var penalised = TextGenerator.ChooseTokens(favoured, [new TextGenerator.Row([0], Tokenizer)], new GenerationOptions { RepetitionPenalty = 10 }, new Generator(1));
        Assert.Equal([1], penalised); // 9 / 10 < 5
    }

    [Fact]
    public void TopKAndTopPSampleOnlyFromTheirSets()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        // Probabilities 0.5, 0.3, 0.15, 0.05 as logits.
        var logits = tensor(new[] { 0.5, 0.3, 0.15, 0.05 }.Select(p => (float)Math.Log(p)).ToArray()).unsqueeze(0);
        var generator = new Generator(5);
        var row = new TextGenerator.Row([0], Tokenizer);
        var topK = Enumerable.Range(0, 300).Select(_ => TextGenerator.ChooseTokens(logits.clone(), [row], new GenerationOptions { DoSample = true, TopK = 2 }, generator)[0]).ToHashSet();
        Assert.Equal([0, 1], topK.Order());
        // top_p = 0.8 keeps {0.5, 0.3}; 0.81 also needs 0.15.
        var topP = Enumerable.Range(0, 300).Select(_ => TextGenerator.ChooseTokens(logits.clone(), [row], new GenerationOptions { DoSample = true, TopP = 0.8 }, generator)[0]).ToHashSet();
        Assert.Equal([0, 1], topP.Order());
        var wider = Enumerable.Range(0, 300).Select(_ => TextGenerator.ChooseTokens(logits.clone(), [row], new GenerationOptions { DoSample = true, TopP = 0.81 }, generator)[0]).ToHashSet();
        Assert.Equal([0, 1, 2], wider.Order());
    }

    [Fact]
    public void BadOptionsAreNamed()
    {
        using var testScope = TorchSharp.torch.NewDisposeScope();   // no test tensor is left to the finalizer
        using var model = Model("gpt2");
        var generator = new TextGenerator(model, Tokenizer);
        Assert.Contains("Temperature", Assert.ThrowsAny<ArgumentException>(() => generator.Generate("a", new GenerationOptions { Temperature = 0 })).Message);
        Assert.Contains("TopP", Assert.ThrowsAny<ArgumentException>(() => generator.Generate("a", new GenerationOptions { TopP = 1.5 })).Message);
        Assert.Contains("positions", Assert.Throws<ArgumentException>(() => generator.Generate("a", new GenerationOptions { MaxNewTokens = 100 })).Message);
    }
}
