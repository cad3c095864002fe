using MLNetPeft.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace MLNetPeft.Generation;

/// <summary>
/// Autoregressive generation over any <see cref="CausalLanguageModel"/>: prompts are batched with left padding,
/// the prompt is run once and every new token reuses the KV cache. Logits are processed in HF's order:
/// repetition penalty, then (when sampling) temperature, top-k and top-p.
/// </summary>
public sealed class TextGenerator
{
    private readonly CausalLanguageModel _model;
    private readonly TextTokenizer _tokenizer;

    public TextGenerator(CausalLanguageModel model, TextTokenizer tokenizer)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
    }

    public GenerationResult Generate(string prompt, GenerationOptions? options = null, Action<GeneratedToken>? onToken = null, CancellationToken cancellationToken = default) =>
        Generate([prompt], options, onToken, cancellationToken)[0];

    /// <summary>Generates a continuation of each prompt; <paramref name="onToken"/> sees every token as it is chosen.</summary>
    public IReadOnlyList<GenerationResult> Generate(IReadOnlyList<string> prompts, GenerationOptions? options = null,
        Action<GeneratedToken>? onToken = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompts);
        var promptIds = prompts.Select((p, i) => p is null
            ? throw new ArgumentException($"Prompt {i} is null.", nameof(prompts))
            : _tokenizer.Encode(p)).ToList();
        return GenerateFromIds(promptIds, options, onToken, cancellationToken);
    }

    /// <summary>Generation from token ids (the prompts are not re-tokenized).</summary>
    public IReadOnlyList<GenerationResult> GenerateFromIds(IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions? options = null,
        Action<GeneratedToken>? onToken = null, CancellationToken cancellationToken = default)
    {
        options ??= new GenerationOptions();
        options.Validate();
        if (prompts.Count == 0) return [];
        if (prompts.Any(p => p.Count == 0)) throw new ArgumentException("Every prompt needs at least one token.", nameof(prompts));
        int batch = prompts.Count, promptLength = prompts.Max(p => p.Count);
        if (_model.MaxPositions is { } max && promptLength + options.MaxNewTokens > max)
            throw new ArgumentException($"A prompt of {promptLength} tokens plus MaxNewTokens = {options.MaxNewTokens} exceeds the model's {max} positions.", nameof(options));

        var stopIds = new HashSet<int>(options.StopTokenIds ?? (_tokenizer.EosId is { } eos ? [eos] : []));
        int padId = _tokenizer.PadId ?? _tokenizer.EosId ?? 0;
        var generator = new Generator((ulong)(options.Seed ?? Random.Shared.NextInt64()));
        var device = _model.parameters().First().device;
        var rows = Enumerable.Range(0, batch).Select(i => new Row(prompts[i], _tokenizer)).ToArray();

        bool wasTraining = _model.training;
        _model.eval();
        using var noGrad = no_grad();
        // Every tensor of the call lives in this scope (or a step's inner one): none is left to the finalizer.
        using var callScope = NewDisposeScope();
        using var cache = _model.CreateCache();
        try
        {
            // Left padding keeps every row's last prompt token in the last column.
            var ids = new long[batch * promptLength];
            var mask = new long[batch * promptLength];
            for (int b = 0; b < batch; b++)
            {
                int offset = promptLength - prompts[b].Count;
                for (int t = 0; t < promptLength; t++)
                {
                    ids[b * promptLength + t] = t < offset ? padId : prompts[b][t - offset];
                    mask[b * promptLength + t] = t < offset ? 0 : 1;
                }
            }
            // Without padding (every prompt of the same length, batch 1 always) no mask is needed: positions follow the cache,
            // and each step saves building a mask and counting positions over it.
            bool padded = prompts.Any(p => p.Count != promptLength);
            Tensor? attentionMask = padded ? tensor(mask, [batch, promptLength]).to(device) : null;
            var input = tensor(ids, [batch, promptLength]).to(device);
            for (int step = 0; step < options.MaxNewTokens && rows.Any(r => !r.Finished); step++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                var logits = _model.Forward(input, attentionMask, cache: cache).select(1, -1).to(ScalarType.Float32).cpu();
                var next = ChooseTokens(logits, rows, options, generator);
                for (int b = 0; b < batch; b++)
                {
                    if (rows[b].Finished) { next[b] = padId; continue; }
                    rows[b].Accept(next[b], stopIds, options.StopStrings, onToken, b);
                    if (rows[b].Finished && !rows[b].AcceptedLast) next[b] = padId;
                }
                // The next step's inputs outlive this step's scope; they belong to the call's scope.
                input.Dispose();
                input = tensor(next.Select(t => (long)t).ToArray(), [batch, 1]).to(device).MoveToOuterDisposeScope();
                if (attentionMask is not null)
                {
                    var grown = cat([attentionMask, ones(batch, 1, ScalarType.Int64, device)], 1).MoveToOuterDisposeScope();
                    attentionMask.Dispose();
                    attentionMask = grown;
                }
            }
            return rows.Select(r => r.Result()).ToList();
        }
        finally
        {
            if (wasTraining) _model.train();
        }
    }

    internal static int[] ChooseTokens(Tensor logits, Row[] rows, GenerationOptions options, Generator generator)
    {
        // Options are per call, so their Scalars are disposed with the call (see Scalars).
        using var penalty = Scalars.Owned(options.RepetitionPenalty);
        using var temperature = Scalars.Owned(options.Temperature);
        using var topP = Scalars.Owned(options.TopP);
        if (options.RepetitionPenalty != 1.0)
        {
            for (int b = 0; b < rows.Length; b++)
            {
                if (rows[b].Finished) continue;
                var seen = tensor(rows[b].AllTokens.Distinct().Select(t => (long)t).ToArray());
                var row = logits[b];
                var picked = row.index_select(0, seen);
                // CTRL's penalty as HF applies it: shrink positive logits, push negative ones further down.
                var penalised = where(picked.gt(Scalars.Of(0.0)), picked.div(penalty), picked.mul(penalty));
                row.index_copy_(0, seen, penalised);
            }
        }
        if (!options.DoSample) return logits.argmax(-1).data<long>().Select(t => (int)t).ToArray();

        var scores = logits.div(temperature);
        if (options.TopK > 0 && options.TopK < scores.shape[^1])
        {
            var kth = scores.topk(options.TopK, -1).values.narrow(-1, options.TopK - 1, 1);
            scores = scores.masked_fill(scores < kth, Scalars.Of(double.NegativeInfinity));
        }
        if (options.TopP < 1.0)
        {
            var (sorted, order) = scores.sort(-1, descending: true);
            var cumulative = sorted.softmax(-1).cumsum(-1);
            // Drop a token when the tokens ranked above it already reach top_p (the first always stays).
            var drop = (cumulative - sorted.softmax(-1)).ge(topP);
            var dropInOriginalOrder = zeros_like(drop).scatter(-1, order, drop);
            scores = scores.masked_fill(dropInOriginalOrder, Scalars.Of(double.NegativeInfinity));
        }
        var probabilities = scores.softmax(-1);
        return multinomial(probabilities, 1, generator: generator).squeeze(-1).data<long>().Select(t => (int)t).ToArray();
    }

    /// <summary>The state of one prompt's generation.</summary>
    internal sealed class Row(IReadOnlyList<int> prompt, TextTokenizer tokenizer)
    {
        private readonly List<int> _generated = [];
        private string _text = "";
        private string? _finalText;
        private FinishReason _reason = FinishReason.Length;

        public bool Finished { get; private set; }
        /// <summary>Whether the last token offered was kept (a stop token is not).</summary>
        public bool AcceptedLast { get; private set; }
        public IEnumerable<int> AllTokens => prompt.Concat(_generated);

        public void Accept(int token, HashSet<int> stopIds, IReadOnlyList<string> stopStrings, Action<GeneratedToken>? onToken, int row)
        {
            if (stopIds.Contains(token))
            {
                Finished = true;
                AcceptedLast = false;
                _reason = FinishReason.StopToken;
                return;
            }
            AcceptedLast = true;
            _generated.Add(token);
            var text = tokenizer.Decode(_generated);
            // A token may end mid-character (byte-level BPE); its text shows up with the next token.
            var delta = "";
            if (text.StartsWith(_text, StringComparison.Ordinal) && !text.EndsWith('\uFFFD'))
            {
                delta = text[_text.Length..];
                _text = text;
            }
            onToken?.Invoke(new GeneratedToken(row, token, delta));
            foreach (var stop in stopStrings)
            {
                int at = text.IndexOf(stop, StringComparison.Ordinal);
                if (at < 0) continue;
                Finished = true;
                _reason = FinishReason.StopString;
                _finalText = text[..at];
                return;
            }
        }

        public GenerationResult Result() => new(_finalText ?? tokenizer.Decode(_generated), _generated, _reason);
    }
}
