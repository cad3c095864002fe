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
//   dotnet run -c Release --project tests/MLNetPeft.Benchmarks [-- --batch 8 --seq 256 --steps 6 --rounds 5] [--peft-only [--method QLoRA] | --generation-only | --preference-only | --rl-only | --qlora-memory | --large-zip [folder] | --llama-cpp]
//
// The last table trains every PEFT method for the same steps on the same toy task and ~10M-parameter model.
// --preference-only: reward-model and DPO steps against hand-written TorchSharp steps (PreferenceBenchmark.cs).
// --rl-only: rollout tokens/s, generation's share of a PPO cycle, a GRPO step against a hand-written one (RlBenchmark.cs).
// --qlora-memory measures the peak resident memory of one training step (full, LoRA, QLoRA; one process each).
// --large-zip saves and loads a model zip holding a 3 GB weights file (LargeZipBenchmark.cs).
// --llama-cpp: generation tokens/s against llama.cpp on the same GGUF model, and our per-token profile (LlamaCppBenchmark.cs).

int Arg(string name, int fallback) => args.SkipWhile(a => a != name).Skip(1).Select(int.Parse).DefaultIfEmpty(fallback).First();
int batch = Arg("--batch", 8), seq = Arg("--seq", 256), steps = Arg("--steps", 6), rounds = Arg("--rounds", 5);
MLNetPeft.Runtime.TorchRuntime.EnsureAvailable();
torch.manual_seed(0);
if (args.SkipWhile(a => a != "--memory-probe").Skip(1).FirstOrDefault() is { } probe)
{
    MemoryBenchmark.Probe(probe);
    return;
}
if (args.Contains("--large-zip"))
{
    LargeZipBenchmark.Run(args.SkipWhile(a => a != "--large-zip").Skip(1).FirstOrDefault());
    return;
}
if (args.Contains("--llama-cpp"))
{
    LlamaCppBenchmark.Run(Arg("--rounds", 3));
    return;
}
if (args.Contains("--qlora-memory"))
{
    MemoryBenchmark.Run();
    return;
}
Console.WriteLine($"threads: {torch.get_num_threads()}, batch {batch} × seq {seq} = {batch * seq} tokens/step, {steps} steps × {rounds} rounds each");

const int benchmarkVocab = 8192;
var gpt2Config = new Gpt2Config { VocabSize = benchmarkVocab, NPositions = seq, NEmbd = 256, NLayer = 10, NHead = 8, ResidPdrop = 0, EmbdPdrop = 0, AttnPdrop = 0 };
var llamaConfig = new LlamaConfig
{
    VocabSize = benchmarkVocab, HiddenSize = 256, IntermediateSize = 688, NumHiddenLayers = 8, NumAttentionHeads = 8, NumKeyValueHeads = 4,
    MaxPositionEmbeddings = seq, TieWordEmbeddingsField = false,
};

// The roofline: the best rate of fp32 matmuls of the models' own GEMM shapes (forward and both backward products of every
// linear layer and the head, for this batch) and of square ones, over interleaved repeats, so that it is a ceiling the
// models' matmuls really reach on this machine now, not one square size measured once.
var roofline = Roofline.Measure([.. Roofline.GemmShapes(batch * seq, [(256, 768), (256, 256), (256, 1024), (1024, 256), (256, benchmarkVocab)]),
    .. Roofline.GemmShapes(batch * seq, [(256, 256), (256, 128), (256, 688), (688, 256), (256, benchmarkVocab)]),
    .. Roofline.GemmShapes(batch * seq, [(256, 640), (640, 256), (256, BaseModelRecipe.VocabSize)])], rounds: 5);
double peak = roofline.Peak;
Console.WriteLine($"fp32 matmul roofline: {peak / 1e9:F1} GFLOP/s, the best of {roofline.Shapes} GEMM shapes × 5 interleaved rounds (best shape {roofline.BestShape}; square 1024³ {roofline.Square1024 / 1e9:F1} GFLOP/s)");
Console.WriteLine();

if (args.Contains("--generation-only"))
{
    GenerationSpeed(256);
    return;
}
if (args.Contains("--rl-only"))
{
    RlBenchmark.Run();
    return;
}
if (args.Contains("--preference-only"))
{
    PreferenceBenchmark.Run();
    return;
}
if (args.Contains("--peft-only"))
{
    PeftFamily();
    return;
}
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
Console.WriteLine();
PeftFamily();
Console.WriteLine();
PreferenceBenchmark.Run();

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
    // No model can run faster than the machine's best matmul: an MFU above 100 % is a broken roofline or FLOP count.
    if (achieved > peak)
        throw new InvalidOperationException($"{name}: {achieved / 1e9:F1} GFLOP/s exceeds the measured roofline of {peak / 1e9:F1} GFLOP/s (MFU {achieved / peak:P1}); the benchmark is wrong.");
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

// Every PEFT method, same seed, same data, same number of steps: trainable share, optimizer state, step time against
// full fine-tuning in the same run, and the held-out loss reached. Twice: on the ~10M Llama config from scratch
// (BitFit on the ~10M GPT-2 config: Llama has no biases) memorising random sequences, and on the pretrained bundled
// model learning the instruction task (held-out people), which is what PEFT is for.
void PeftFamily()
{
    // Eight fixed random sequences of 127 tokens (each with its eos, one block): the method must make the model
    // reproduce them; the loss is measured on fresh blocks of the same sequences.
    var toyRandom = new Random(5);
    var patterns = Enumerable.Range(0, 8).Select(_ => (IReadOnlyList<int>)Enumerable.Range(0, 127).Select(_ => toyRandom.Next(1, 200)).ToList()).ToList();
    PeftTable("~10M models from scratch, memorising 8 random sequences (batch 8 × 128)",
        () => new LlamaForCausalLM(llamaConfig), "Llama 10M", () => new Gpt2ForCausalLM(gpt2Config), "GPT-2 10M",
        TokenBlocks.Pack(Enumerable.Range(0, 400).Select(i => patterns[i % 8]), 128, 0),
        TokenBlocks.Pack(Enumerable.Range(0, 40).Select(i => patterns[(i * 3) % 8]), 128, 0), steps: 30, promptTokenizer: null);

    var world = BaseModelRecipe.World();
    var tokenizer = BundledBaseModel.LoadTokenizer();
    TokenBlocks Instructions(IReadOnlyList<MLNetPeft.BaseModel.World.Person> people, int seed) => TokenBlocks.FromExamples(
        MLNetPeft.BaseModel.Tasks.InstructionTasks.Generate(people, 2, seed).Select(e => (tokenizer.Encode(e.Prompt), tokenizer.Encode(e.Completion, addSpecialTokens: false))),
        64, tokenizer.PadId ?? tokenizer.EosId!.Value, tokenizer.EosId!.Value);
    PeftTable("the pretrained bundled model (4.7M), instruction tuning, completion-only loss on 100 held-out people (batch 8 × 64)",
        () => BundledBaseModel.Load(), "bundled 4.7M", null, null,
        Instructions(MLNetPeft.BaseModel.Tasks.InstructionTasks.TrainingSet(world), 1),
        Instructions(MLNetPeft.BaseModel.Tasks.InstructionTasks.HeldOutSet(world), 2), steps: 40, promptTokenizer: tokenizer);
}

void PeftTable(string title, Func<CausalLanguageModel> llama, string llamaName, Func<CausalLanguageModel>? gpt2, string? gpt2Name,
    TokenBlocks blocks, TokenBlocks held, int steps, MLNetPeft.Tokenization.TextTokenizer? promptTokenizer)
{
    const int peftBatch = 8;
    // Learning rates: the usual order of magnitude per family (full 1e-3, weight deltas 1e-2, scaling vectors and virtual tokens 1e-1).
    var rows = new List<(string Method, string Model, long Trainable, long Total, long StateBytes, double StepMs, double Loss)>();
    string extra = "";
    var only = args.SkipWhile(a => a != "--method").Skip(1).FirstOrDefault();   // e.g. --method QLoRA,IA3: those and full fine-tuning
    void Run(string method, string modelName, Func<CausalLanguageModel> create, Func<CausalLanguageModel, MLNetPeft.Tuners.PeftModel?> apply, double lr)
    {
        if (only is not null && method != "full fine-tuning" && !only.Split(',').Any(o => method.StartsWith(o, StringComparison.OrdinalIgnoreCase))) return;
        using var model = create();
        model.train();
        var peft = apply(model);
        // The PEFT model's counts include weights that are no parameters (QLoRA's NF4 weights, at their logical size).
        var (trainable, total) = peft?.ParameterCounts() ?? (model.parameters().Where(p => p.requires_grad).Sum(p => p.numel()), model.parameters().Sum(p => p.numel()));
        long state;
        using (var a = new AdamW(model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => (p.name, p.parameter)))) state = a.StateBytes;
        var options = new TrainingOptions { MaxSteps = steps, BatchSize = peftBatch, LearningRate = lr, WarmupSteps = 3, WeightDecay = 0, Seed = 1 };
        var stepTimes = new List<double>();
        var clock = Stopwatch.StartNew();
        new LanguageModelTrainer(model, options, peft as MLNetPeft.Tuners.ITrainingStepHook).Train(blocks,
            progress: new SynchronousProgress<TrainingProgress>(p => { stepTimes.Add(clock.Elapsed.TotalMilliseconds); clock.Restart(); }));
        double loss = LanguageModelTrainer.Evaluate(model, held, peftBatch);
        rows.Add((method, modelName, trainable, total, state, Median(stepTimes.Skip(3).ToList()), loss));
        peft?.Dispose();
    }
    var all = new[] { LoraConfig.AllLinear };
    double before;
    using (var untouched = llama()) before = LanguageModelTrainer.Evaluate(untouched, held, peftBatch);
    Run("full fine-tuning", llamaName, llama, _ => null, 1e-3);
    Run("LoRA r=8 all-linear", llamaName, llama, m => LoraModel.Apply(m, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = all }, seed: 1), 1e-2);
    Run("rsLoRA r=8", llamaName, llama, m => LoraModel.Apply(m, new LoraConfig { R = 8, LoraAlpha = 16, UseRsLora = true, TargetModules = all }, seed: 1), 1e-2);
    Run("DoRA r=8", llamaName, llama, m => LoraModel.Apply(m, new LoraConfig { R = 8, LoraAlpha = 16, UseDora = true, TargetModules = all }, seed: 1), 1e-2);
    Run("AdaLoRA 12→8", llamaName, llama, m => MLNetPeft.Tuners.AdaLora.AdaLoraModel.Apply(m,
        new MLNetPeft.Tuners.AdaLora.AdaLoraConfig { InitR = 12, TargetR = 8, TInit = 3, TFinal = 6, TotalStep = steps, LoraAlpha = 16, TargetModules = all }, seed: 1), 3e-2);
    Run("QLoRA (NF4 + LoRA r=8)", llamaName, llama, m =>
    {
        var nf4 = MLNetPeft.Tuners.QLora.Nf4Model.Quantize(m);
        var (q, f) = nf4.WeightBytes();
        extra = $"QLoRA base linear weights: {q:N0} bytes NF4 with double quantisation vs {f:N0} bytes fp32 = {(double)q / f:P1} ({8.0 * q / (f / 4):F3} bits per weight)";
        return LoraModel.Apply(m, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = all }, seed: 1);
    }, 1e-2);
    Run("IA3", llamaName, llama, m => MLNetPeft.Tuners.Ia3.Ia3Model.Apply(m, new MLNetPeft.Tuners.Ia3.Ia3Config()), 1e-1);
    Run("adapters (Houlsby, reduction 16)", llamaName, llama, m => MLNetPeft.Tuners.Houlsby.HoulsbyModel.Apply(m, new MLNetPeft.Tuners.Houlsby.HoulsbyConfig(), seed: 1), 3e-2);
    Run("prompt tuning (20 tokens)", llamaName, llama, m => MLNetPeft.Tuners.PromptTuning.PromptTuningModel.Apply(m,
        new MLNetPeft.Tuners.PromptTuning.PromptTuningConfig { PromptTuningInit = MLNetPeft.Tuners.PromptTuning.PromptTuningInit.SampleVocab }, promptTokenizer, seed: 1), 1e-1);
    Run("P-Tuning (MLP encoder)", llamaName, llama, m => MLNetPeft.Tuners.PTuning.PTuningModel.Apply(m, new MLNetPeft.Tuners.PTuning.PTuningConfig(), seed: 1), 1e-2);
    Run("prefix tuning (projection)", llamaName, llama, m => MLNetPeft.Tuners.PrefixTuning.PrefixTuningModel.Apply(m,
        new MLNetPeft.Tuners.PrefixTuning.PrefixTuningConfig { PrefixProjection = true }, seed: 1), 1e-2);
    Run("P-Tuning v2", llamaName, llama, m => MLNetPeft.Tuners.PrefixTuning.PrefixTuningModel.Apply(m, MLNetPeft.Tuners.PrefixTuning.PrefixTuningConfig.PTuningV2(), seed: 1), 1e-1);
    Run("LayerNorm tuning", llamaName, llama, m => MLNetPeft.Tuners.Selective.SelectiveModel.Apply(m,
        new MLNetPeft.Tuners.Selective.SelectiveConfig { Tuning = MLNetPeft.Tuners.Selective.SelectiveTuning.LayerNorm }), 1e-1);
    if (gpt2 is not null)
    {
        Run("full fine-tuning", gpt2Name!, gpt2, _ => null, 1e-3);
        Run("BitFit", gpt2Name!, gpt2, m => MLNetPeft.Tuners.Selective.SelectiveModel.Apply(m, new MLNetPeft.Tuners.Selective.SelectiveConfig()), 1e-1);
    }

    Console.WriteLine($"PEFT methods on {title}, {steps} steps each; held-out loss before training {before:F3}:");
    Console.WriteLine();
    Console.WriteLine("| method | model | trainable | share | optimizer state | ms/step | vs full (same model) | held-out loss |");
    Console.WriteLine("|---|---|---|---|---|---|---|---|");
    foreach (var r in rows)
    {
        var full = rows.First(x => x.Model == r.Model && x.Method == "full fine-tuning");
        Console.WriteLine($"| {r.Method} | {r.Model} | {r.Trainable:N0} | {100.0 * r.Trainable / r.Total:F2} % | {r.StateBytes / 1024.0:N0} KiB | {r.StepMs:F0} | {r.StepMs / full.StepMs:F2} | {r.Loss:F3} |");
    }
    Console.WriteLine();
    Console.WriteLine(extra);
    Console.WriteLine();
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

static double Median(List<double> xs)
{
    var s = xs.Order().ToList();
    return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2;
}
