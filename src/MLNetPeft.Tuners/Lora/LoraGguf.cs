using MLNetPeft.Architectures;
using MLNetPeft.Gguf;
using MLNetPeft.Runtime;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Lora;

/// <summary>
/// LoRA adapters in llama.cpp's GGUF adapter format (what <c>convert_lora_to_gguf.py</c> writes and
/// <c>llama_adapter_lora_init</c> reads): <c>general.type</c> "adapter", <c>adapter.type</c> "lora", <c>adapter.lora.alpha</c>,
/// and per adapted matrix <c>{base tensor}.lora_a</c> (A, [r, in]) and <c>.lora_b</c> (B, [out, r]), unmerged, applied by
/// llama.cpp as W x + (alpha / r) · B A x.
/// </summary>
public static class LoraGguf
{
    /// <summary>
    /// Writes the adapters of <paramref name="lora"/> (on a Llama-family causal LM or GPT-2) atomically. B carries whatever
    /// of the adapter's scaling llama.cpp's alpha / r does not (rsLoRA's √r, per-module rank and alpha patterns), so each
    /// adapted matrix gets exactly our scaling; for q_proj and k_proj, B's rows are permuted as the base file's rows are.
    /// GPT-2's Conv1D adapters need no transposition: A [r, in] and B [out, r] act on x as llama.cpp's do.
    /// </summary>
    /// <exception cref="NotSupportedException">DoRA, trained biases, fully trained modules, merged adapters or another architecture: none of which llama.cpp's adapters hold.</exception>
    public static void Save(LoraModel lora, string path, GgufFileType fileType = GgufFileType.F32)
    {
        ArgumentNullException.ThrowIfNull(lora);
        string arch;
        Func<string, string?> ggufName;
        Func<string, int?> permutedHeads = _ => null;
        switch ((lora.Model as CausalLanguageModel)?.Config)
        {
            case LlamaConfig llama:
                arch = LlamaGguf.Architecture(llama);
                ggufName = LlamaGguf.GgufName;
                permutedHeads = hf => LlamaGguf.PermutedHeads(hf, llama, arch);
                break;
            case Gpt2Config gpt2:
                arch = Gpt2Gguf.Architecture;
                ggufName = hf => Gpt2Gguf.GgufName(gpt2, hf);
                break;
            default:
                throw new NotSupportedException("GGUF LoRA export covers adapters on causal LMs of the Llama family (llama, mistral, qwen2) and GPT-2.");
        }
        if (lora.Config.UseDora) throw new NotSupportedException("DoRA adapters have a magnitude vector, which llama.cpp's LoRA adapters do not; merge the adapter (MergeAndUnload) and export the model instead.");
        if (lora.Config.Bias != LoraBias.None) throw new NotSupportedException($"The adapter trains biases (bias = {lora.Config.Bias}), which llama.cpp's LoRA adapters cannot hold; merge it and export the model instead.");
        if (lora.ModulesToSave.Count > 0) throw new NotSupportedException($"The adapter trains whole modules ({string.Join(", ", lora.ModulesToSave)}), which llama.cpp's LoRA adapters cannot hold; merge it and export the model instead.");
        if (fileType == GgufFileType.Q8_0) throw new NotSupportedException("LoRA adapters are written in F32 or F16.");
        double alpha = lora.Config.LoraAlpha;
        var writer = new GgufWriter()
            .Add("general.architecture", GgufValue.Of(arch))
            .Add("general.type", GgufValue.Of("adapter"))
            .Add("general.name", GgufValue.Of(lora.AdapterName))
            .Add("adapter.type", GgufValue.Of("lora"))
            .Add("adapter.lora.alpha", GgufValue.Of((float)alpha));
        var type = fileType == GgufFileType.F16 ? GgmlType.F16 : GgmlType.F32;
        using var scope = NewDisposeScope();
        foreach (var adapter in lora.Adapters)
        {
            if (adapter.Merged) throw new NotSupportedException($"The adapter of '{adapter.ModuleName}' is merged into the base weights; unmerge it before exporting it as an adapter.");
            var hfName = adapter.ModuleName + ".weight";
            var baseName = ggufName(hfName) ?? throw new NotSupportedException($"'{adapter.ModuleName}' has no llama.cpp counterpart.");
            // llama.cpp scales by alpha / r with r read from B: the rest of our scaling goes into B.
            double correction = adapter.Scaling * adapter.Rank / alpha;
            var b = adapter.LoraB.detach();
            if (correction != 1.0) b = b.Times(correction);
            if (permutedHeads(hfName) is { } heads) b = LlamaGguf.ToInterleavedRows(b, heads);
            writer.AddTensor(baseName + ".lora_a", adapter.LoraA.detach(), type);
            writer.AddTensor(baseName + ".lora_b", b, type);
        }
        writer.Save(path);
    }
}
