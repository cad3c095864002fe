using static TorchSharp.torch;

namespace MLNetPeft.Architectures;

/// <summary>
/// A model that a <see cref="VirtualPrompt"/> can be put in front of: every causal LM, the BERT encoder, and a
/// classifier over one (which hands the prompt to its encoder). Implementations are modules.
/// </summary>
public interface IPromptableModel
{
    /// <summary>Virtual tokens of a prompt-learning method, or null.</summary>
    VirtualPrompt? VirtualPrompt { get; set; }

    ModelConfig Config { get; }

    /// <summary>Token embeddings [batch, seq, hidden] of ids, before positions are added (prompt tuning initialises from them).</summary>
    Tensor Embed(Tensor inputIds);
}

/// <summary>
/// Virtual tokens that prompt-learning methods place in front of every sequence of a <see cref="CausalLanguageModel"/>:
/// input embeddings prepended to the token embeddings (prompt tuning, P-Tuning), or keys and values every layer
/// attends to as if they were cached (prefix tuning, P-Tuning v2). The model's <see cref="CausalLanguageModel.Forward"/>
/// puts them in on the first call of a sequence (no cache, or an empty one), extends the attention mask by
/// <see cref="Length"/> ones, counts positions after them, and returns logits of the real tokens only; later cached
/// calls find them in the cache. <see cref="BertModel.Forward"/> does the same for an encoder (HF BERT's positions:
/// prepended embeddings take positions 0..Length-1, a key/value prefix shifts the real tokens' positions by Length)
/// and returns hidden states of the real tokens only, so a classifier's pooling reads the real [CLS] token (PEFT's
/// BERT pooler reads the first virtual token instead).
/// </summary>
public abstract class VirtualPrompt
{
    /// <summary>Number of virtual tokens.</summary>
    public abstract int Length { get; }

    /// <summary>Whether the prompt takes part (false reproduces the base model exactly).</summary>
    public bool Enabled { get; set; } = true;

    /// <summary>Embeddings [batch, Length, hidden] to put before the input embeddings, or null.</summary>
    public virtual Tensor? InputEmbeddings(long batch, ScalarType dtype, Device device) => null;

    /// <summary>Per layer, keys and values [batch, kvHeads, Length, headDim] to pre-fill the cache with, or null.</summary>
    public virtual IReadOnlyList<(Tensor Key, Tensor Value)>? PastKeyValues(long batch, ScalarType dtype, Device device) => null;
}
