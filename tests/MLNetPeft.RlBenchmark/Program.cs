using System.Diagnostics;
using MLNetPeft.Architectures;
using MLNetPeft.BaseModel;
using MLNetPeft.Generation;
using MLNetPeft.Training;
using MLNetPeft.Training.Grpo;
using MLNetPeft.Training.Ppo;
using MLNetPeft.Training.Reinforcement;
using MLNetPeft.Training.RewardModeling;
using MLNetPeft.Tuners.Lora;

// RL with a verifiable reward on the bundled base model: "a plus b is" → a + b. Ten numbers of 0–49 (drawn with seed
// 2026) are held out: training prompts use only the other forty, the 100 held-out prompts only those ten, so no
// held-out prompt (and no operand of one) occurs in training.
//   dotnet run -c Release --project tests/MLNetPeft.RlBenchmark -- --method grpo|ppo --steps N --lr X --batch B [--beta K] [--rank R] [--eval-every N]
// PPO against a learned reward model on the synthetic world (PpoWorld.cs):
//   dotnet run -c Release --project tests/MLNetPeft.RlBenchmark -- --method ppo-world --steps N --lr X --batch B --kl K [--from-sft [--sft-steps N]] [--implicit-reward]
string method = Arg("--method") ?? "grpo";
if (method == "ppo-world")
{
    PpoWorld.Run(int.Parse(Arg("--steps") ?? "200"), double.Parse(Arg("--lr") ?? "1e-3", System.Globalization.CultureInfo.InvariantCulture),
        int.Parse(Arg("--batch") ?? "16"), double.Parse(Arg("--kl") ?? "0.05", System.Globalization.CultureInfo.InvariantCulture), args.Contains("--from-sft"),
        args.Contains("--implicit-reward"), int.Parse(Arg("--sft-steps") ?? "60"));
    return;
}
int batch = int.Parse(Arg("--batch") ?? "32");
int steps = int.Parse(Arg("--steps") ?? "200");
double lr = double.Parse(Arg("--lr") ?? "1e-3", System.Globalization.CultureInfo.InvariantCulture);
double beta = double.Parse(Arg("--beta") ?? "0", System.Globalization.CultureInfo.InvariantCulture);
int rank = int.Parse(Arg("--rank") ?? "8");
int generations = int.Parse(Arg("--generations") ?? "8");   // GRPO's completions per prompt (batch = prompts × this)
int evalEvery = int.Parse(Arg("--eval-every") ?? "0"); // greedy validation accuracy every this many steps (0: only at the end)
bool keepBest = args.Contains("--keep-best");            // end with the adapter of the best validation accuracy seen (needs --eval-every)
// GRPO only: a second, weighted reward for how close the answer is (1 − |answer − sum| / 10, at least 0), so that a group
// whose completions are all wrong still ranks them; the exact-match reward stays the one every accuracy counts.
double closeness = double.Parse(Arg("--closeness") ?? "0", System.Globalization.CultureInfo.InvariantCulture);

var heldOutNumbers = new Random(2026).GetItems(Enumerable.Range(0, 50).ToArray(), 50).Distinct().Take(10).Order().ToArray();
// Five more numbers are kept out of training for validation, so that settings are chosen, as the held-out set measures,
// on sums with an operand never seen in training: validation prompts hold at least one of them and no held-out number.
var validationNumbers = new Random(5).GetItems(Enumerable.Range(0, 50).Except(heldOutNumbers).ToArray(), 50).Distinct().Take(5).Order().ToArray();
var trainNumbers = Enumerable.Range(0, 50).Except(heldOutNumbers).Except(validationNumbers).ToArray();
string Prompt(int a, int b) => $"{a} plus {b} is";
var train = trainNumbers.SelectMany(a => trainNumbers.Select(b => Prompt(a, b))).ToList();
var notHeldOut = Enumerable.Range(0, 50).Except(heldOutNumbers).ToArray();
var validation = notHeldOut.SelectMany(a => notHeldOut.Select(b => (a, b)))
    .Where(x => validationNumbers.Contains(x.a) || validationNumbers.Contains(x.b)).Select(x => (Prompt(x.a, x.b), x.a + x.b)).ToList();
var heldOut = heldOutNumbers.SelectMany(a => heldOutNumbers.Select(b => (Prompt: Prompt(a, b), Sum: a + b))).ToList();
Console.WriteLine($"Held-out numbers {string.Join(", ", heldOutNumbers)}, validation numbers {string.Join(", ", validationNumbers)}: {train.Count} training prompts, {validation.Count} validation prompts, {heldOut.Count} held-out prompts.");

// The sum a prompt asks for, and the response's first number (null when it does not start with one).
static (int Sum, int? Answer) Read(string prompt, string response)
{
    var words = prompt.Split(' ');
    var digits = new string(response.TrimStart().TakeWhile(char.IsAsciiDigit).Take(9).ToArray());
    return (int.Parse(words[0]) + int.Parse(words[2]), digits.Length > 0 ? int.Parse(digits) : null);
}
// The reward: 1 when the response's first number is the sum, 0 otherwise.
static float Correct(string prompt, string response) => Read(prompt, response) is (var sum, int answer) && answer == sum ? 1f : 0f;
var reward = RewardFunction.FromDelegate(Correct);
static float Close(string prompt, string response) => Read(prompt, response) is (var sum, int answer) ? Math.Max(0f, 1f - Math.Abs(answer - sum) / 10f) : 0f;
var sampling = new SamplingOptions { Temperature = 1.0, MaxNewTokens = 4, StopStrings = ["."] };

using var policy = BundledBaseModel.Load();
var tokenizer = BundledBaseModel.LoadTokenizer();
double Greedy(IReadOnlyList<(string Prompt, int Sum)> set)
{
    var answers = new TextGenerator(policy, tokenizer).Generate(set.Select(s => s.Prompt).ToList(), new GenerationOptions { MaxNewTokens = 4, StopStrings = ["."] });
    return answers.Zip(set).Count(x => Correct(x.Second.Prompt, x.First.Text) == 1) / (double)set.Count;
}
double PassAt(int k, IReadOnlyList<(string Prompt, int Sum)> set)
{
    var prompts = set.SelectMany(s => Enumerable.Repeat(s.Prompt, k)).ToList();
    var answers = new TextGenerator(policy, tokenizer).Generate(prompts, new GenerationOptions { MaxNewTokens = 4, StopStrings = ["."], DoSample = true, Temperature = 1.0, Seed = 7 });
    return Enumerable.Range(0, set.Count).Count(i => Enumerable.Range(0, k).Any(j => Correct(prompts[i * k + j], answers[i * k + j].Text) == 1)) / (double)set.Count;
}
Console.WriteLine($"Base model: greedy held-out {Greedy(heldOut):P1}, pass@8 held-out {PassAt(8, heldOut):P1}, greedy validation {Greedy(validation):P1}");

using var adapter = LoraModel.Apply(policy, new LoraConfig { R = rank, LoraAlpha = 2 * rank, TargetModules = [LoraConfig.AllLinear] }, seed: 1);
var options = new TrainingOptions { MaxSteps = steps, BatchSize = batch, LearningRate = lr, WarmupSteps = 10, WeightDecay = 0, Seed = 1 };
var clock = Stopwatch.StartNew();
(double Accuracy, int Step, Dictionary<string, TorchSharp.torch.Tensor> Weights) best = (-1, 0, []);
var log = new SynchronousProgress<TrainingProgress>(p =>
{
    if (p.Step % 20 != 0 && p.Step != 1) return;
    var m = p.Metrics!;
    string shown = method == "grpo"
        ? $"reward {m["reward"]:F3}, zero-std groups {m["frac_reward_zero_std"]:P0}, length {m["completions/mean_length"]:F2}"
        : $"score {m["objective/scores"]:F3}, KL {m["objective/kl"]:F3}, clipfrac {m["policy/clipfrac_avg"]:F3}, value loss {m["loss/value_avg"]:F4}";
    Console.WriteLine($"step {p.Step,4}: loss {p.Loss:F4}, {shown}  [{clock.Elapsed:mm\\:ss}]");
    if (evalEvery > 0 && p.Step % evalEvery == 0)
    {
        double accuracy = Greedy(validation);
        Console.WriteLine($"step {p.Step,4}: greedy validation {accuracy:P1}");
        if (keepBest && accuracy > best.Accuracy)
        {
            foreach (var t in best.Weights.Values) t.Dispose();
            best = (accuracy, p.Step, adapter.AdapterStateDict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone().DetachFromDisposeScope()));   // the trainer disposes what a step creates
        }
    }
});
if (method == "grpo")
{
    WeightedReward[] rewards = closeness > 0
        ? [new WeightedReward("sum", reward), new WeightedReward("close", RewardFunction.FromDelegate(Close), closeness)]
        : [new WeightedReward("sum", reward)];
    new GrpoTrainer(policy, tokenizer, rewards, options, new GrpoOptions { NumGenerations = generations, Beta = beta, Sampling = sampling }, adapter).Train(train, log);
}
else
{
    // The critic starts from the policy's backbone (no reward model exists for a rule-based reward).
    using var valueBackbone = BundledBaseModel.Load();
    var value = new CausalLmForSequenceClassification(valueBackbone, seed: 1);
    new PpoTrainer(policy, value, tokenizer, reward, options, new PpoOptions { Sampling = sampling, NumMiniBatches = 2 }, adapter).Train(train, log);
}
if (keepBest && best.Weights.Count > 0)
{
    var current = adapter.AdapterStateDict();
    using (TorchSharp.torch.no_grad())
        foreach (var (name, weight) in best.Weights) current[name].copy_(weight);
    foreach (var t in best.Weights.Values) t.Dispose();
    Console.WriteLine($"Kept the adapter of step {best.Step} (greedy validation {best.Accuracy:P1}).");
}
Console.WriteLine($"After {method} ({steps} steps, lr {lr}, β {beta}, LoRA r {rank}, G {generations}, closeness {closeness}, {clock.Elapsed:mm\\:ss}): greedy held-out {Greedy(heldOut):P1}, pass@8 held-out {PassAt(8, heldOut):P1}, greedy validation {Greedy(validation):P1}");

string? Arg(string name) => Array.IndexOf(args, name) is var i and >= 0 && i + 1 < args.Length ? args[i + 1] : null;
