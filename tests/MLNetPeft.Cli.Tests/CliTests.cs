using System.ClientModel;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Tasks;
using OpenAI;
using OpenAI.Chat;

namespace MLNetPeft.Cli.Tests;

public class CliTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static async Task<(int Code, string Output, string Error)> Run(params string[] args)
    {
        var (stdout, stderr) = (new StringWriter(), new StringWriter());
        int code = await CliApp.RunAsync(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    private static void WriteJsonLines(string path, IEnumerable<object> rows) =>
        File.WriteAllLines(path, rows.Select(r => JsonSerializer.Serialize(r)));

    [Fact]
    public async Task TrainSftThenEvaluateThenServeTheBundledModel()
    {
        using var dir = new TempFolder();
        var world = BaseModelRecipe.World();
        WriteJsonLines(dir.File("train.jsonl"), InstructionTasks.Generate(InstructionTasks.TrainingSet(world), 2, 1)
            .Select(e => new { instruction = e.Prompt, answer = e.Completion }));
        // The evaluation file is a CSV with quoted fields (prompts hold line breaks and colons).
        var heldOut = InstructionTasks.Generate(InstructionTasks.HeldOutSet(world), 1, 2).Take(40).ToList();
        File.WriteAllLines(dir.File("test.csv"), ["instruction,answer", .. heldOut.Select(e => $"\"{e.Prompt.Replace("\"", "\"\"")}\",\"{e.Completion.Replace("\"", "\"\"")}\"")]);

        var before = await Run("convert", "--from", BundledBaseModel.Folder, "--to", dir.File("base.zip"), "--max-new-tokens", "6");
        Assert.Equal(0, before.Code);
        var baseEval = await Run("evaluate", "-m", dir.File("base.zip"), "--data", dir.File("test.csv"), "--prompt-column", "instruction", "--response-column", "answer");
        Assert.Equal(0, baseEval.Code);

        var trained = await Run("train", "sft", "--data", dir.File("train.jsonl"), "--prompt-column", "instruction", "--response-column", "answer",
            "-o", dir.File("sft.zip"), "--steps", "120", "--batch-size", "16", "--lr", "5e-3", "--max-length", "64", "--max-new-tokens", "6");
        output.WriteLine(trained.Output + trained.Error);
        Assert.Equal(0, trained.Code);
        Assert.Contains("step 120/120", trained.Output);
        Assert.True(File.Exists(dir.File("sft.zip")));
        var png = File.ReadAllBytes(dir.File("sft.loss.png"));
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], png[..4]);

        var afterEval = await Run("evaluate", "-m", dir.File("sft.zip"), "--data", dir.File("test.csv"), "--prompt-column", "instruction", "--response-column", "answer");
        output.WriteLine($"base: {baseEval.Output}tuned: {afterEval.Output}");
        Assert.Equal(0, afterEval.Code);
        double ExactMatch(string text) => double.Parse(text.Split("exact match ")[1].Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(ExactMatch(afterEval.Output) > ExactMatch(baseEval.Output) + 20, $"exact match {ExactMatch(baseEval.Output)} -> {ExactMatch(afterEval.Output)} %");

        var generated = await Run("generate", "-m", dir.File("sft.zip"), "-p", heldOut[0].Prompt);
        Assert.Equal(0, generated.Code);
        Assert.False(string.IsNullOrWhiteSpace(generated.Output));

        // serve, asked by the official OpenAI client, stopped by cancellation as Ctrl+C does.
        int port = FreePort();
        using var stop = new CancellationTokenSource();
        var serving = CliApp.RunAsync(["serve", "-m", $"sft={dir.File("sft.zip")}", "--urls", $"http://127.0.0.1:{port}"], new StringWriter(), new StringWriter(), stop.Token);
        var chat = new ChatClient("sft", new ApiKeyCredential("unused"), new OpenAIClientOptions { Endpoint = new Uri($"http://127.0.0.1:{port}/v1") });
        ChatCompletion? answer = null;
        for (int attempt = 0; answer is null && attempt < 300; attempt++)
        {
            try { answer = (await chat.CompleteChatAsync([new UserChatMessage("Where does Alice live?")])).Value; }
            catch (Exception) when (!serving.IsCompleted) { await Task.Delay(100); } // not listening yet

        }
        if (serving.IsCompleted) Assert.Fail($"serve ended with {await serving}");
        Assert.NotNull(answer);
        stop.Cancel();
        Assert.Equal(0, await serving);
    }

    [Fact]
    public async Task ConvertExportsAnHfFolderThatRoundTrips()
    {
        using var dir = new TempFolder();
        Assert.Equal(0, (await Run("convert", "--from", BundledBaseModel.Folder, "--to", dir.File("a.zip"), "--max-new-tokens", "8")).Code);
        Assert.Equal(0, (await Run("convert", "--from", dir.File("a.zip"), "--to", dir.File("hf"))).Code);
        Assert.True(File.Exists(dir.File("hf/config.json")));
        Assert.True(File.Exists(dir.File("hf/model.safetensors")));
        Assert.Equal(0, (await Run("convert", "--from", dir.File("hf"), "--to", dir.File("b.zip"), "--max-new-tokens", "8")).Code);
        var a = await Run("generate", "-m", dir.File("a.zip"), "-p", "Alice lives in");
        var b = await Run("generate", "-m", dir.File("b.zip"), "-p", "Alice lives in");
        Assert.Equal(a.Output, b.Output);
    }

    [Fact]
    public async Task ConvertWritesGgufAndImportsIt()
    {
        using var dir = new TempFolder();
        Assert.Equal(0, (await Run("convert", "--from", BundledBaseModel.Folder, "--to", dir.File("a.zip"), "--max-new-tokens", "8")).Code);
        var exported = await Run("convert", "--from", BundledBaseModel.Folder, "--to", dir.File("m.gguf"), "--gguf-type", "f32");
        Assert.Equal(0, exported.Code);
        Assert.Contains("GGUF file", exported.Output);
        var fromZip = await Run("convert", "--from", dir.File("a.zip"), "--to", dir.File("z.gguf"), "--gguf-type", "q8_0");
        Assert.Equal(0, fromZip.Code);
        using (var file = MLNetPeft.Gguf.GgufFile.Open(dir.File("z.gguf")))
            Assert.Equal(MLNetPeft.Gguf.GgmlType.Q8_0, file.Info("blk.0.attn_q.weight").Type);
        Assert.Equal(0, (await Run("convert", "--from", dir.File("m.gguf"), "--to", dir.File("b.zip"), "--max-new-tokens", "8")).Code);
        Assert.Equal(0, (await Run("convert", "--from", dir.File("m.gguf"), "--to", dir.File("hf"))).Code);
        Assert.True(File.Exists(dir.File("hf/tokenizer.json")));
        var a = await Run("generate", "-m", dir.File("a.zip"), "-p", "Alice lives in");
        var b = await Run("generate", "-m", dir.File("b.zip"), "-p", "Alice lives in");
        Assert.Equal(a.Output, b.Output);

        File.WriteAllBytes(dir.File("bad.gguf"), File.ReadAllBytes(dir.File("m.gguf"))[..1000]);
        var bad = await Run("convert", "--from", dir.File("bad.gguf"), "--to", dir.File("bad"));
        Assert.Equal(1, bad.Code);
        Assert.Contains("bad.gguf", bad.Error);
        Assert.DoesNotContain("   at ", bad.Error);
    }

    [Fact]
    public async Task TrainGrpoWithARuleRewardFromTheAnswerColumn()
    {
        using var dir = new TempFolder();
        var random = new Random(3);
        File.WriteAllLines(dir.File("sums.tsv"), ["question\tanswer", .. Enumerable.Range(0, 16).Select(_ =>
        {
            int a = random.Next(0, 20), b = random.Next(0, 20);
            return $"{a} plus {b} is\t{a + b}";
        })]);
        var result = await Run("train", "grpo", "--data", dir.File("sums.tsv"), "--prompt-column", "question", "--answer-column", "answer",
            "-o", dir.File("grpo.zip"), "--steps", "6", "--batch-size", "16", "--generations", "8", "--max-new-tokens", "4", "--stop", ".", "--no-plot");
        output.WriteLine(result.Output + result.Error);
        Assert.Equal(0, result.Code);
        Assert.Contains("step 6/6", result.Output);
        Assert.True(File.Exists(dir.File("grpo.zip")));
        Assert.False(File.Exists(dir.File("grpo.loss.png")));
        var generated = await Run("generate", "-m", dir.File("grpo.zip"), "-p", "3 plus 4 is");
        Assert.Equal(0, generated.Code);

        var noReward = await Run("train", "ppo", "--data", dir.File("sums.tsv"), "--prompt-column", "question", "-o", dir.File("ppo.zip"));
        Assert.Equal(1, noReward.Code);
        Assert.Contains("PPO needs --reward-model", noReward.Error);
    }

    [Fact]
    public async Task ErrorsAreOneLineAndANonZeroExitCode()
    {
        using var dir = new TempFolder();
        File.WriteAllLines(dir.File("rows.tsv"), ["Prompt\tResponse", "a\tb"]);
        File.WriteAllLines(dir.File("bad.jsonl"), ["{\"Prompt\": \"a\", \"Response\": \"b\"}", "{not json"]);
        async Task Expect(string part, params string[] args)
        {
            var result = await Run(args);
            Assert.NotEqual(0, result.Code);
            string message = result.Error.Trim();
            Assert.Contains(part, message);
            Assert.DoesNotContain("   at ", message); // no stack trace
        }
        await Expect("missing.jsonl' does not exist", "train", "sft", "--data", dir.File("missing.jsonl"), "-o", dir.File("m.zip"));
        await Expect("no column 'Question' (--prompt-column); its columns are: Prompt, Response", "train", "sft", "--data", dir.File("rows.tsv"), "-o", dir.File("m.zip"), "--prompt-column", "Question");
        await Expect("line 2 is not valid JSON", "train", "sft", "--data", dir.File("bad.jsonl"), "-o", dir.File("m.zip"));
        await Expect("--steps is 0", "train", "sft", "--data", dir.File("rows.tsv"), "-o", dir.File("m.zip"), "--steps", "0");
        await Expect("nope.zip' does not exist", "evaluate", "-m", dir.File("nope.zip"), "--data", dir.File("rows.tsv"));
        await Expect("--output", "train", "sft", "--data", dir.File("rows.tsv"));               // a required option, named by System.CommandLine
        await Expect("must be name=path", "serve", "-m", "chat");
        File.WriteAllText(dir.File("notzip.zip"), "plain text");
        await Expect("", "generate", "-m", dir.File("notzip.zip"), "-p", "x");
        var help = await Run("train", "sft", "--help");
        Assert.Equal(0, help.Code);
        foreach (var option in new[] { "--data", "--output", "--base", "--method", "--steps", "--lora-r", "--checkpoints", "--plot", "--prompt-column" })
            Assert.Contains(option, help.Output);
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
