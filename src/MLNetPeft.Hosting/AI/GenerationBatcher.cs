using MLNetPeft.Generation;
using MLNetPeft.Hosting.Models;
using MLNetPeft.ML.Generation;

namespace MLNetPeft.Hosting.AI;

/// <summary>
/// Serves the generation requests of one model, running the ones that wait with the same options as one left-padded
/// batch: concurrent requests share forward passes instead of queueing behind each other. A batch runs until its
/// longest row is done (static batching: a request arriving meanwhile waits for the next batch). Seeded sampling runs
/// alone, so that a seed gives the same text however many requests are in flight.
/// </summary>
public sealed class GenerationBatcher : IDisposable
{
    private readonly TextGenerationTransformer _model;
    private readonly int _maxBatchSize;
    private readonly List<Request> _waiting = [];
    private readonly SemaphoreSlim _arrived = new(0);
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _worker;
    private long _batches, _requests;

    /// <param name="model">The model; it stays the caller's.</param>
    /// <param name="maxBatchSize">Requests per batch at most.</param>
    public GenerationBatcher(TextGenerationTransformer model, int maxBatchSize = 16)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _maxBatchSize = maxBatchSize >= 1 ? maxBatchSize : throw new ArgumentOutOfRangeException(nameof(maxBatchSize), maxBatchSize, "must be at least 1");
        _worker = Task.Factory.StartNew(Work, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <summary>The model served (its tokenizer and saved options are what requests are prepared with).</summary>
    public TextGenerationTransformer Model => _model;
    /// <summary>Batches run so far, and requests served in them: their ratio is the mean batch size.</summary>
    public long Batches => Interlocked.Read(ref _batches);
    public long Requests => Interlocked.Read(ref _requests);

    /// <summary>The batcher shared by every request on the model version of <paramref name="use"/> (disposed with that version).</summary>
    public static GenerationBatcher For(ModelUse<TextGenerationTransformer> use) => use.GetOrAddShared(t => new GenerationBatcher(t));

    /// <summary>
    /// Generates a continuation of <paramref name="prompt"/>; <paramref name="onText"/> sees the text as it is generated
    /// (on the batch's thread). Cancelling drops the request (a batch stops early only when all its requests are cancelled).
    /// </summary>
    public Task<GenerationResult> GenerateAsync(string prompt, GenerationOptions options, Action<string>? onText = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        ObjectDisposedException.ThrowIf(_stop.IsCancellationRequested, this);
        // Checked per request: in the batch, one prompt too long would fail every request with it.
        int promptTokens = _model.Tokenizer.Encode(prompt).Count;
        if (promptTokens == 0) throw new ArgumentException("The prompt is empty: generation needs at least one token.", nameof(prompt));
        if (_model.Model.ContextLength is { } max && promptTokens + options.MaxNewTokens > max)
            throw new ContextLengthExceededException(promptTokens, options.MaxNewTokens, max);
        var request = new Request(prompt, options, BatchKey.Of(options), onText, cancellationToken);
        lock (_waiting) _waiting.Add(request);
        _arrived.Release();
        return request.Result.Task;
    }

    private void Work()
    {
        while (true)
        {
            try { _arrived.Wait(_stop.Token); }
            catch (OperationCanceledException) { break; }
            List<Request> batch;
            lock (_waiting)
            {
                var first = _waiting[0];
                batch = first.Key is null ? [first] : _waiting.Where(r => first.Key.Equals(r.Key)).Take(_maxBatchSize).ToList();
                foreach (var r in batch) _waiting.Remove(r);
            }
            // One arrival was consumed by the wait; the others taken along are consumed here.
            for (int i = 1; i < batch.Count; i++) _arrived.Wait();
            Run(batch.Where(r => !r.CancelIfRequested()).ToList());
        }
        lock (_waiting)
        {
            foreach (var r in _waiting) r.Fail(new ObjectDisposedException(nameof(GenerationBatcher), "The model was unloaded before the request ran."));
            _waiting.Clear();
        }
    }

    private void Run(List<Request> batch)
    {
        if (batch.Count == 0) return;
        // The batch stops when every request in it has been cancelled (or the batcher is disposed).
        using var allCancelled = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        int live = batch.Count;
        var registrations = batch.Select(r => r.CancellationToken.Register(() => { if (Interlocked.Decrement(ref live) == 0) allCancelled.Cancel(); })).ToList();
        try
        {
            var results = _model.Generate(batch.Select(r => r.Prompt).ToList(), batch[0].Options,
                token => { if (token.TextDelta.Length > 0) batch[token.Row].OnText?.Invoke(token.TextDelta); }, allCancelled.Token);
            Interlocked.Increment(ref _batches);
            Interlocked.Add(ref _requests, batch.Count);
            GenerationMetrics.RecordBatch(batch.Count);
            for (int i = 0; i < batch.Count; i++)
                if (!batch[i].CancelIfRequested()) batch[i].Complete(results[i]);
        }
        catch (Exception e)
        {
            foreach (var r in batch)
                if (!r.CancelIfRequested()) r.Fail(e);
        }
        finally
        {
            foreach (var registration in registrations) registration.Dispose();
        }
    }

    public void Dispose()
    {
        if (_stop.IsCancellationRequested) return;
        _stop.Cancel();
        _worker.Wait();
        _stop.Dispose();
        _arrived.Dispose();
    }

    private sealed record Request(string Prompt, GenerationOptions Options, BatchKey? Key, Action<string>? OnText, CancellationToken CancellationToken)
    {
        private readonly long _arrived = System.Diagnostics.Stopwatch.GetTimestamp();

        public TaskCompletionSource<GenerationResult> Result { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public bool CancelIfRequested()
        {
            if (!CancellationToken.IsCancellationRequested || !Result.TrySetCanceled(CancellationToken)) return false;
            Record("cancelled", 0);
            return true;
        }

        public void Complete(GenerationResult result)
        {
            if (Result.TrySetResult(result)) Record("completed", result.TokenIds.Count);
        }

        public void Fail(Exception error)
        {
            if (Result.TrySetException(error)) Record("failed", 0);
        }

        private void Record(string outcome, int tokens) =>
            GenerationMetrics.RecordRequest(outcome, tokens, System.Diagnostics.Stopwatch.GetElapsedTime(_arrived).TotalSeconds);
    }

    /// <summary>Requests batch together when every generation option is the same; null: seeded sampling, which runs alone.</summary>
    private sealed record BatchKey(int MaxNewTokens, bool DoSample, double Temperature, int TopK, double TopP, double RepetitionPenalty, string Stops)
    {
        public static BatchKey? Of(GenerationOptions o) => o.DoSample && o.Seed is not null ? null
            : new(o.MaxNewTokens, o.DoSample, o.Temperature, o.TopK, o.TopP, o.RepetitionPenalty,
                string.Join('\u0000', o.StopStrings) + '\u0001' + (o.StopTokenIds is null ? "eos" : string.Join(',', o.StopTokenIds)));
    }
}

/// <summary>A prompt plus the tokens asked for is longer than the model's context.</summary>
public sealed class ContextLengthExceededException(int promptTokens, int maxNewTokens, int contextLength)
    : ArgumentException($"The prompt has {promptTokens} tokens; with {maxNewTokens} new tokens that exceeds the model's context of {contextLength} tokens.", "prompt")
{
    public int PromptTokens { get; } = promptTokens;
    public int MaxNewTokens { get; } = maxNewTokens;
    public int ContextLength { get; } = contextLength;
}
