using System.Diagnostics;
using MLNetPeft.Architectures;
using MLNetPeft.BaseModel;
using MLNetPeft.Benchmarks;
using MLNetPeft.Generation;
using MLNetPeft.Training;
using MLNetPeft.Training.LanguageModeling;
using MLNetPeft.Tuners.Lora;
using TorchSharp;
using static TorchSharp.torch;

// Forward+backward throughput of ~10M-parameter GPT-2 and Llama configs, as model-FLOPs utilisation against an fp32
// matmul measured in the same run, and as a step-time ratio against minimal hand-written TorchSharp models
// (MinimalModels.cs). Ours and the baseline alternate, so machine noise hits both alike.
//
//   dotnet run -c Release --project tests/MLNetPeft.Benchmarks [-- --batch 8 --seq 256 --steps 6 --rounds 5]

int Arg(string name, int fallback) => args.SkipWhile(a => a != name).Skip(1).Select(int.Parse).DefaultIfEmpty(fallback).First();
int batch = Arg("--batch", 8), seq = Arg("--seq", 256), steps = Arg("--steps", 6), rounds = Arg("--rounds", 5);
MLNetPeft.Runtime.TorchRuntime.EnsureAvailable();
torch.manual_seed(0);
Console.WriteLine($"threads: {torch.get_num_threads()}, batch {batch} × seq {seq} = {batch * seq} tokens/step, {steps} steps × {rounds} rounds each");

double peak = MeasureMatmulFlops(1024);
Console.WriteLine($"fp32 matmul 1024³: {peak / 1e9:F1} GFLOP/s (the roofline for MFU)");
Console.WriteLine();

const int benchmarkVocab = 8192;
var gpt2Config = new Gpt2Config { VocabSize = benchmarkVocab, NPositions = seq, NEmbd = 256, NLayer = 10, NHead = 8, ResidPdrop = 0, EmbdPdrop = 0, AttnPdrop = 0 };
var llamaConfig = new LlamaConfig
{
    VocabSize = benchmarkVocab, HiddenSize = 256, IntermediateSize = 688, NumHiddenLayers = 8, NumAttentionHeads = 8, NumKeyValueHeads = 4,
    MaxPositionEmbeddings = seq, TieWordEmbeddingsField = false,
};

Console.WriteLine("| model | params | ours ms/step | minimal ms/step | ratio (ours/minimal) | ours tokens/s | model GFLOP/s | MFU |");
Console.WriteLine("|---|---|---|---|---|---|---|---|");
Report("GPT-2", new Gpt2ForCausalLM(gpt2Config), new MinimalGpt2(benchmarkVocab, seq, 256, 10, 8), gpt2Config.NLayer, gpt2Config.NEmbd, tiedHead: true, benchmarkVocab);
Report("Llama", new LlamaForCausalLM(llamaConfig), new MinimalLlama(benchmarkVocab, 256, 688, 8, 8, 4), llamaConfig.NumHiddenLayers, llamaConfig.HiddenSize, tiedHead: false, benchmarkVocab);
var baseConfig = BaseModelRecipe.ModelConfig(BaseModelRecipe.VocabSize);
Report("bundled base (Llama)", new LlamaForCausalLM(baseConfig), new MinimalLlama(baseConfig.VocabSize, 256, 640, 6, 8, 4, tiedHead: true),
    baseConfig.NumHiddenLayers, baseConfig.HiddenSize, tiedHead: true, baseConfig.VocabSize);
Console.WriteLine();
Console.WriteLine("FLOPs per token = 6·(matmul parameters, output head included) + 6·2·layers·seq·d (attention scores and values).");
Console.WriteLine();
GenerationSpeed(256);
Console.WriteLine();
FineTuningCosts();

void Report(string name, CausalLanguageModel ours, nn.Module<Tensor, Tensor> minimal, int layers, int dim, bool tiedHead, int vocab)
{
    long parameters = ours.ParameterCount();
    if (minimal.parameters().Sum(p => p.numel()) != parameters)
        throw new InvalidOperationException($"{name}: baseline has {minimal.parameters().Sum(p => p.numel())} parameters, ours {parameters}");
    // Embedding lookups cost no FLOPs; a tied head is a matmul with the embedding matrix, so it counts once.
    long embeddingLookups = ours.named_parameters().Where(p => p.name.Contains("wpe") || (!tiedHead && p.name.Contains("embed_tokens"))).Sum(p => p.parameter.numel());
    double flopsPerToken = 6.0 * (parameters - embeddingLookups) + 6.0 * 2 * layers * seq * dim;

    var ids = randint(0, vocab, [batch, seq]);
    var targets = randint(0, vocab, [batch, seq]);
    Func<Tensor, Tensor> oursForward = x => ours.Forward(x);
    var oursTimes = new List<double>();
    var minimalTimes = new List<double>();
    TimeSteps(oursForward, ours, ids, targets, 2);          // warm-up
    TimeSteps(minimal.forward, minimal, ids, targets, 2);
    for (int r = 0; r < rounds; r++)
    {
        oursTimes.Add(TimeSteps(oursForward, ours, ids, targets, steps));
        minimalTimes.Add(TimeSteps(minimal.forward, minimal, ids, targets, steps));
    }
    double oursMs = Median(oursTimes) * 1000, minimalMs = Median(minimalTimes) * 1000;
    double tokensPerSecond = batch * seq / (oursMs / 1000);
    double achieved = flopsPerToken * tokensPerSecond;
    Console.WriteLine($"| {name} | {parameters / 1e6:F2}M | {oursMs:F0} | {minimalMs:F0} | {oursMs / minimalMs:F3} | {tokensPerSecond:F0} | {achieved / 1e9:F1} | {achieved / peak:P1} |");
}

// Greedy generation of the bundled base model: the KV cache against recomputing the whole sequence for each token.
void GenerationSpeed(int newTokens)
{
    using var model = BundledBaseModel.Load();
    var tokenizer = BundledBaseModel.LoadTokenizer();
    const string prompt = "One day, ";
    var options = new GenerationOptions { MaxNewTokens = newTokens, StopTokenIds = [] };
    var generator = new TextGenerator(model, tokenizer);
    generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 8 }); // warm-up
    var cachedTimes = new List<double>();
    var recomputeTimes = new List<double>();
    IReadOnlyList<int> cachedIds = [], recomputedIds = [];
    for (int r = 0; r < 3; r++)
    {
        var sw = Stopwatch.StartNew();
        cachedIds = generator.Generate(prompt, options).TokenIds;
        cachedTimes.Add(sw.Elapsed.TotalSeconds);
        sw.Restart();
        recomputedIds = GreedyWithoutCache(model, tokenizer.Encode(prompt), newTokens);
        recomputeTimes.Add(sw.Elapsed.TotalSeconds);
    }
    if (!cachedIds.SequenceEqual(recomputedIds)) throw new InvalidOperationException("cached and recomputed generations differ");
    double cached = newTokens / Median(cachedTimes), recompute = newTokens / Median(recomputeTimes);
    Console.WriteLine($"| generation, {newTokens} new tokens (bundled base model, greedy) | tokens/s |");
    Console.WriteLine("|---|---|");
    Console.WriteLine($"| with KV cache | {cached:F0} |");
    Console.WriteLine($"| full recompute per token | {recompute:F0} |");
    Console.WriteLine($"| speedup (same run) | {cached / recompute:F1}× |");
}

// Fine-tuning the bundled model: the library's training step against a hand-written TorchSharp step on the same model
// and batch; LoRA against full fine-tuning; inference latency of a merged LoRA model against the base model.
void FineTuningCosts()
{
    var blocks = TokenBlocks.Pack(Enumerable.Range(0, 400).Select(i => (IReadOnlyList<int>)Enumerable.Range(0, 60).Select(j => (i * 7 + j * 13) % 2000 + 1).ToList()), 128, 0);
    const int batchSize = 8, stepsPerRound = 5;

    double LibraryStep(LlamaForCausalLM model, int rounds)
    {
        var times = new List<double>();
        for (int r = 0; r < rounds; r++)
        {
            var trainer = new LanguageModelTrainer(model, new TrainingOptions { MaxSteps = stepsPerRound, BatchSize = batchSize, LearningRate = 1e-4, WarmupSteps = 0, MaxGradNorm = 1.0, Seed = r });
            var sw = Stopwatch.StartNew();
            trainer.Train(blocks);
            times.Add(sw.Elapsed.TotalSeconds / stepsPerRound);
        }
        return Median(times);
    }

    double HandWrittenStep(LlamaForCausalLM model, int rounds)
    {
        var trainable = model.parameters().Where(p => p.requires_grad).ToList();
        var optimizer = optim.AdamW(trainable, lr: 1e-4, beta1: 0.9, beta2: 0.95, weight_decay: 0.1);
        var random = new Random(0);
        var times = new List<double>();
        for (int r = 0; r < rounds; r++)
        {
            var sw = Stopwatch.StartNew();
            for (int s = 0; s < stepsPerRound; s++)
            {
                using var scope = NewDisposeScope();
                var (inputs, targets) = blocks.Batch(Enumerable.Range(0, batchSize).Select(_ => random.Next(blocks.Count)).ToArray());
                optimizer.zero_grad();
                var logits = model.Forward(inputs);
                var loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[^1]), targets.view(-1));
                loss.backward();
                nn.utils.clip_grad_norm_(trainable, 1.0);
                optimizer.step();
            }
            times.Add(sw.Elapsed.TotalSeconds / stepsPerRound);
        }
        return Median(times);
    }

    LlamaForCausalLM Fresh() => (LlamaForCausalLM)BundledBaseModel.Load();

    using var full = Fresh();
    full.train();
    LibraryStep(full, 1); HandWrittenStep(full, 1);           // warm-up
    double libraryFull = LibraryStep(full, 3), handFull = HandWrittenStep(full, 3);

    using var adapted = Fresh();
    adapted.train();
    using var lora = LoraModel.Apply(adapted, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] });
    LibraryStep(adapted, 1);
    double libraryLora = LibraryStep(adapted, 3);
    var (trainable, total) = lora.ParameterCounts();
    long fullStateBytes, loraStateBytes;
    using (var a = new AdamW(full.named_parameters().Select(p => (p.name, p.parameter)))) fullStateBytes = a.StateBytes;
    using (var a = new AdamW(adapted.named_parameters().Where(p => p.parameter.requires_grad).Select(p => (p.name, p.parameter)))) loraStateBytes = a.StateBytes;

    Console.WriteLine($"| fine-tuning the bundled model (batch {batchSize} × 128 tokens) | value |");
    Console.WriteLine("|---|---|");
    Console.WriteLine($"| library step vs hand-written TorchSharp step (full fine-tuning, same model and batch) | {libraryFull * 1000:F0} ms vs {handFull * 1000:F0} ms = {libraryFull / handFull:F3} |");
    Console.WriteLine($"| LoRA r=8 all-linear: trainable share | {trainable:N0} of {total:N0} = {100.0 * trainable / total:F2} % |");
    Console.WriteLine($"| optimizer state, LoRA vs full | {loraStateBytes / 1024.0:F0} KiB vs {fullStateBytes / 1024.0 / 1024:F1} MiB |");
    Console.WriteLine($"| step time, LoRA vs full (library) | {libraryLora * 1000:F0} ms vs {libraryFull * 1000:F0} ms = {libraryLora / libraryFull:F3} |");

    // Inference: the merged model is a plain model again, so it should cost what the base costs.
    lora.MergeAndUnload();
    adapted.eval();
    using var baseModel = Fresh();
    var input = blocks.Batch(Enumerable.Range(0, batchSize).ToArray()).Inputs;
    double Latency(CausalLanguageModel m)
    {
        using var _ = no_grad();
        for (int i = 0; i < 2; i++) m.Forward(input).Dispose();
        var times = new List<double>();
        for (int i = 0; i < 7; i++) { var sw = Stopwatch.StartNew(); m.Forward(input).Dispose(); times.Add(sw.Elapsed.TotalSeconds); }
        return Median(times);
    }
    double merged = 0, plain = 0;
    for (int r = 0; r < 3; r++) { plain += Latency(baseModel); merged += Latency(adapted); }
    Console.WriteLine($"| forward latency, merged LoRA vs base | {merged / 3 * 1000:F1} ms vs {plain / 3 * 1000:F1} ms = {merged / plain:F3} |");
}

static List<int> GreedyWithoutCache(CausalLanguageModel model, IReadOnlyList<int> prompt, int newTokens)
{
    var ids = prompt.Select(i => (long)i).ToList();
    var generated = new List<int>();
    using var _ = no_grad();
    for (int i = 0; i < newTokens; i++)
    {
        using var scope = NewDisposeScope();
        var logits = model.Forward(tensor(ids.ToArray()).unsqueeze(0));
        int next = (int)logits[0, -1].argmax().item<long>();
        ids.Add(next);
        generated.Add(next);
    }
    return generated;
}

static double TimeSteps(Func<Tensor, Tensor> forward, nn.Module module, Tensor ids, Tensor targets, int count)
{
    module.train();
    var sw = Stopwatch.StartNew();
    for (int i = 0; i < count; i++)
    {
        using var scope = NewDisposeScope();
        module.zero_grad();
        var logits = forward(ids);
        var loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[^1]), targets.view(-1));
        loss.backward();
    }
    return sw.Elapsed.TotalSeconds / count;
}

static double MeasureMatmulFlops(int n)
{
    var a = randn(n, n);
    var b = randn(n, n);
    for (int i = 0; i < 3; i++) matmul(a, b).Dispose();
    var times = new List<double>();
    for (int r = 0; r < 7; r++)
    {
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < 5; i++) matmul(a, b).Dispose();
        times.Add(sw.Elapsed.TotalSeconds / 5);
    }
    return 2.0 * n * n * n / Median(times);
}

static double Median(List<double> xs)
{
    var s = xs.Order().ToList();
    return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2;
}
