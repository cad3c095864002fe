using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using static TorchSharp.torch;

namespace MLNetPeft.Models.Tests;

/// <summary>A temporary folder deleted on dispose.</summary>
public sealed class TempFolder : IDisposable
{
    public TempFolder() => Directory.CreateDirectory(Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "mlnetpeft-tests", Guid.NewGuid().ToString("N")));
    public string Path { get; }
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose() { try { Directory.Delete(Path, recursive: true); } catch (IOException) { } }
}

public static class SharedData
{
    /// <summary>The repository's root folder (the one holding MLNetPeft.sln).</summary>
    public static string RepositoryRoot { get; } = FindRoot();

    /// <summary>The project's read-only real data (../shared/data beside the repository), or null when absent.</summary>
    public static string? Folder { get; } = Find();

    public static string Require(string relative)
    {
        Skip.If(Folder is null, "../shared/data is not present beside the repository.");
        var path = Path.Combine(Folder!, relative);
        Skip.IfNot(Directory.Exists(path) || File.Exists(path), $"{path} is not present.");
        return path;
    }

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "MLNetPeft.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException($"No folder above '{AppContext.BaseDirectory}' holds MLNetPeft.sln.");
    }

    private static string? Find()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "MLNetPeft.sln")))
            {
                var shared = Path.Combine(dir.Parent?.FullName ?? dir.FullName, "shared", "data");
                return Directory.Exists(shared) ? shared : null;
            }
        }
        return null;
    }
}

/// <summary>Tiny configurations of every family, small enough for fast tests.</summary>
public static class TinyModels
{
    public static Gpt2Config Gpt2() => new() { VocabSize = 97, NEmbd = 32, NHead = 4, NLayer = 2, NPositions = 64, ResidPdrop = 0, EmbdPdrop = 0, AttnPdrop = 0 };

    public static LlamaConfig Llama(RopeScaling? scaling = null, bool tie = false, string modelType = "llama", int? slidingWindow = null) => new()
    {
        ModelType = modelType, VocabSize = 101, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4,
        NumKeyValueHeads = 2, MaxPositionEmbeddings = 64, RopeTheta = 10000, RopeScaling = scaling, TieWordEmbeddingsField = tie,
        RmsNormEps = 1e-6, SlidingWindow = slidingWindow,
    };

    public static Qwen2Config Qwen2() => new()
    {
        VocabSize = 103, HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 1,
        MaxPositionEmbeddings = 64, RopeTheta = 1_000_000, TieWordEmbeddingsField = true,
    };

    public static BertConfig Bert() => new()
    {
        VocabSize = 89, HiddenSize = 32, NumHiddenLayers = 2, NumAttentionHeads = 4, IntermediateSize = 64, MaxPositionEmbeddings = 40,
        HiddenDropoutProb = 0, AttentionProbsDropoutProb = 0,
    };

    /// <summary>A model whose weights are random (seeded) and whose biases and norms are perturbed too, so every parameter matters.</summary>
    public static T Randomize<T>(T model, long seed) where T : PretrainedModule
    {
        var generator = new Generator((ulong)seed);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using var scale = TorchSharp.ScalarExtensionMethods.ToScalar(0.3);
        using var shift = TorchSharp.ScalarExtensionMethods.ToScalar(0.1);
        foreach (var (_, p) in model.named_parameters())
        {
            var values = randn(p.shape, generator: generator).mul_(scale);
            p.copy_(p.dim() == 1 ? values.add_(shift) : values);
        }
        model.eval();
        return model;
    }

    public static Tensor RandomIds(long batch, long length, long vocab, long seed) =>
        randint(0, vocab, [batch, length], generator: new Generator((ulong)seed));
}

public static class TensorAssert
{
    /// <summary>Same dtype, shape and bytes.</summary>
    public static void BitIdentical(Tensor expected, Tensor actual, string? what = null)
    {
        using var scope = NewDisposeScope();
        Assert.Equal(expected.dtype, actual.dtype);
        Assert.Equal(expected.shape, actual.shape);
        using var e = expected.cpu().contiguous();
        using var a = actual.cpu().contiguous();
        Assert.True(e.bytes.SequenceEqual(a.bytes), $"{what ?? "tensors"} are not bit-identical");
    }

    /// <summary>Largest absolute difference is at most <paramref name="tolerance"/>.</summary>
    public static void Close(Tensor expected, Tensor actual, double tolerance, string? what = null)
    {
        Assert.Equal(expected.shape, actual.shape);
        using var scope = NewDisposeScope();
        using var diff = (expected.to(ScalarType.Float64) - actual.to(ScalarType.Float64)).abs().max();
        double d = diff.item<double>();
        Assert.True(d <= tolerance, $"{what ?? "tensors"} differ by {d:E3} (tolerance {tolerance:E1})");
    }
}

/// <summary>A byte-level BPE tokenizer with one token per printable ASCII character (no merges): 96 characters plus &lt;|endoftext|&gt; = 97 ids.</summary>
public static class TinyTokenizer
{
    public const int VocabSize = 97;

    public static MLNetPeft.Tokenization.TextTokenizer Create()
    {
        using var dir = new TempFolder();
        var vocab = new System.Text.Json.Nodes.JsonObject();
        int id = 0;
        vocab["Ċ"] = id++;                              // byte-level spelling of '\n'
        vocab["Ġ"] = id++;                              // ... and of ' '
        for (char c = '!'; c <= '~'; c++) vocab[c.ToString()] = id++;
        vocab["<|endoftext|>"] = id++;
        File.WriteAllText(dir.File("vocab.json"), vocab.ToJsonString());
        File.WriteAllText(dir.File("merges.txt"), "#version: 0.2\n");
        File.WriteAllText(dir.File("tokenizer_config.json"), """{"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}""");
        return MLNetPeft.Tokenization.TextTokenizer.FromPretrained(dir.Path);
    }
}

/// <summary>
/// A thread that keeps drawing from libtorch's process-wide generator, standing in for a second model training at
/// the same time. <see cref="Start"/> returns once it is drawing; <see cref="Stop"/> returns how many draws it made.
/// </summary>
public sealed class RandomDrawingThread : IDisposable
{
    private readonly Thread _thread;
    private readonly ManualResetEventSlim _drawing = new();
    private volatile bool _stop;
    private long _draws;

    private RandomDrawingThread()
    {
        _thread = new Thread(() =>
        {
            while (!_stop)
            {
                using (var _ = TorchSharp.torch.rand(256)) { }
                Interlocked.Increment(ref _draws);
                _drawing.Set();
            }
        }) { IsBackground = true };
    }

    public static RandomDrawingThread Start()
    {
        var t = new RandomDrawingThread();
        t._thread.Start();
        t._drawing.Wait();
        return t;
    }

    public long Stop()
    {
        _stop = true;
        _thread.Join();
        return Interlocked.Read(ref _draws);
    }

    public void Dispose()
    {
        if (!_stop) Stop();
        _drawing.Dispose();
    }
}
