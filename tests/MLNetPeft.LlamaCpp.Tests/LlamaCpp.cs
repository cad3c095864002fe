using LLama;
using LLama.Common;
using LLama.Native;

namespace MLNetPeft.LlamaCpp.Tests;

/// <summary>llama.cpp through LLamaSharp, set up to compute as exactly as it can: float32 KV cache, no flash attention.</summary>
internal sealed class LlamaCpp : IDisposable
{
    static LlamaCpp()
    {
        // llama.cpp logs every tensor it loads; keep test output to errors.
        NativeLogConfig.llama_log_set((level, message) => { if (level == LLamaLogLevel.Error) Console.Error.Write(message); });
    }

    private readonly LLamaWeights _weights;
    private readonly LLamaContext _context;
    private readonly List<LoraAdapter> _adapters = [];

    public LlamaCpp(string ggufPath, int contextSize = 512, int threads = 2)
    {
        var p = new ModelParams(ggufPath)
        {
            ContextSize = (uint)contextSize, BatchSize = (uint)contextSize, UBatchSize = (uint)contextSize,
            Threads = threads, BatchThreads = threads, GpuLayerCount = 0,
            TypeK = GGMLType.GGML_TYPE_F32, TypeV = GGMLType.GGML_TYPE_F32,
            FlashAttention = false,
        };
        _weights = LLamaWeights.LoadFromFile(p);
        _context = _weights.CreateContext(p);
    }

    public int VocabSize => _context.Vocab.Count;

    /// <summary>Applies a GGUF LoRA adapter at <paramref name="scale"/> (1: as trained).</summary>
    public void ApplyLora(string adapterPath, float scale = 1f)
    {
        var adapter = _weights.NativeHandle.LoadLoraFromFile(adapterPath);
        _adapters.Add(adapter);
        Span<(LoraAdapter, float)> set = [(adapter, scale)];
        _context.NativeHandle.SetLoraAdapters(set);
    }

    /// <summary>Logits of every position of <paramref name="ids"/>, run as one batch from an empty cache.</summary>
    public float[][] Logits(IReadOnlyList<int> ids)
    {
        _context.NativeHandle.MemoryClear(true);
        var batch = new LLamaBatch();
        for (int i = 0; i < ids.Count; i++) batch.Add((LLamaToken)ids[i], i, LLamaSeqId.Zero, true);
        Decode(batch);
        return Enumerable.Range(0, ids.Count).Select(i => _context.NativeHandle.GetLogitsIth(i).ToArray()).ToArray();
    }

    /// <summary>Runs <paramref name="prompt"/> from an empty cache as one batch, computing the last position's logits only.</summary>
    public void Prefill(IReadOnlyList<int> prompt)
    {
        _context.NativeHandle.MemoryClear(true);
        var batch = new LLamaBatch();
        for (int i = 0; i < prompt.Count; i++) batch.Add((LLamaToken)prompt[i], i, LLamaSeqId.Zero, i == prompt.Count - 1);
        Decode(batch);
        _lastIndex = batch.TokenCount - 1;
    }

    /// <summary>Greedy decoding of <paramref name="newTokens"/> tokens after <paramref name="prompt"/>, one token per decode call.</summary>
    public List<int> Greedy(IReadOnlyList<int> prompt, int newTokens, int? stopId = null)
    {
        Prefill(prompt);
        var output = new List<int>();
        var batch = new LLamaBatch();
        for (int step = 0; step < newTokens; step++)
        {
            int next = ArgMax(_context.NativeHandle.GetLogitsIth(_lastIndex));
            output.Add(next);
            if (next == stopId || step == newTokens - 1) break;
            batch.Clear();
            batch.Add((LLamaToken)next, prompt.Count + step, LLamaSeqId.Zero, true);
            Decode(batch);
            _lastIndex = 0;
        }
        return output;
    }

    private int _lastIndex;

    private void Decode(LLamaBatch batch)
    {
        var result = _context.NativeHandle.Decode(batch);
        if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode returned {result}.");
    }

    /// <summary>llama.cpp's tokenization of <paramref name="text"/> (special tokens parsed, no bos added).</summary>
    public int[] Tokenize(string text) => _weights.Tokenize(text, false, true, System.Text.Encoding.UTF8).Select(t => (int)t).ToArray();

    internal static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }

    public void Dispose()
    {
        _context.Dispose();
        _weights.Dispose();
    }
}
