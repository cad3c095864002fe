using Microsoft.ML.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Persistence;
using MLNetPeft.Tokenization;
using MLNetPeft.Training;
using MLNetPeft.Tuners;
using MLNetPeft.Tuners.QLora;

namespace MLNetPeft.ML.FineTuning;

/// <summary>What a tuning estimator's training step receives: the copy that trains, its method, and a way to load a frozen copy of its start.</summary>
/// <param name="Model">The copy of the caller's model that trains (in train mode, the method applied).</param>
/// <param name="Adapter">The PEFT method on it; null for full fine-tuning.</param>
/// <param name="LoadFrozenCopy">Loads the model as it was before training (another copy, for a reference model); the caller disposes it.</param>
internal sealed record TuningRun(CausalLanguageModel Model, PeftModel? Adapter, Func<CausalLanguageModel> LoadFrozenCopy);

/// <summary>
/// The flow every estimator that tunes a causal LM shares: copy the caller's model (which stays as it was), quantise it
/// for QLoRA, apply the method, let the estimator train it, then store the result as the options say (the adapter kept
/// apart in PEFT's format, or merged; the base embedded or referenced) and return a <see cref="TextGenerationTransformer"/>
/// that runs exactly what the zip holds.
/// </summary>
internal static class CausalLmTuning
{
    public static TextGenerationTransformer TuneCopy(IHostEnvironment env, CausalLanguageModel model, TextTokenizer tokenizer, CausalLmTuningOptions o,
        IChannel ch, string generationInput, string? scoredResponseColumn, Func<TuningRun, TrainingResult> train)
    {
        bool keepAdapter = o.Method != FineTuningMethod.Full && (!o.MergeAdapter || o.CannotMerge);
        if (o.CannotMerge && o.MergeAdapter) ch.Info($"{o.Method} cannot be merged into the weights; the adapter is kept apart.");
        var storage = ModelPackage.Resolve(o.BaseModelStorage, ModelPackage.WeightBytes(model), baseUnchanged: keepAdapter && o.Method != FineTuningMethod.QLora, ch);
        // The copy trains, and the tuned model then runs, where the model given runs (or where the options say).
        var like = ModelLoadOptions.Like(model);
        var placement = new ModelLoadOptions { DType = o.DType ?? like.DType, Device = o.Device ?? like.Device };
        return ModelFiles.WithTempFolder(work =>
        {
            // Train a copy, so the caller's model stays as it was. A referenced base is the checkpoint on disk.
            var reference = storage == BaseModelStorage.Reference ? BaseModelReference.Of(model.SourceFolder!) : null;
            var baseFolder = reference?.Folder ?? Path.Combine(work, "base");
            if (reference is null) model.SavePretrained(baseFolder);
            var startFolder = baseFolder;
            ModelPackage package;
            using (var tuned = PretrainedModels.LoadCausalLM(baseFolder, placement))
            {
                tuned.train();
                Nf4Model? quantized = null;
                if (o.Method == FineTuningMethod.QLora)
                {
                    quantized = PeftMethods.Quantize(tuned, o.Quantization, ch);
                    if (keepAdapter)
                    {
                        // The frozen quantised base is what the zip stores, so save it before adapters are attached.
                        baseFolder = Path.Combine(work, "quantized-base");
                        Nf4Checkpoint.Save(baseFolder, tuned, quantized);
                    }
                }
                var peft = PeftMethods.Apply(o.Method, tuned, o, tokenizer, o.Seed);
                if (peft is not null)
                {
                    var (trainable, total) = peft.ParameterCounts();
                    ch.Info($"{o.Method}: {trainable:N0} of {total:N0} parameters train ({100.0 * trainable / total:F2} %).");
                }
                var result = train(new TuningRun(tuned, peft, () =>
                {
                    var copy = PretrainedModels.LoadCausalLM(startFolder, placement);
                    foreach (var p in copy.parameters()) p.requires_grad = false;
                    copy.eval();
                    return copy;
                }));
                ch.Info($"Final training loss {result.FinalLoss:F4} after {result.Steps} steps" + (result.ValidationLoss is { } v ? $"; validation loss {v:F4}." : "."));
                if (keepAdapter)
                {
                    var adapterFolder = Path.Combine(work, "adapter");
                    PeftAdapterFiles.Save(adapterFolder, peft!, baseModelNameOrPath: reference?.Folder);
                    package = reference is null ? ModelPackage.Embed(baseFolder, adapterFolder) : ModelPackage.Reference(reference, adapterFolder);
                }
                else
                {
                    package = ModelPackage.MergeAndEmbed(tuned, quantized, peft, Path.Combine(work, "tuned"));
                }
            }
            // The transformer runs exactly what the zip holds, so a saved and reloaded model behaves the same.
            try
            {
                var (loaded, loadedTokenizer) = package.LoadModel(placement);
                return new TextGenerationTransformer(env, loaded, loadedTokenizer, package, o.OutputColumnName, generationInput, o.Generation,
                    scoredResponseColumn, ownsModel: true);
            }
            catch
            {
                package.Dispose();
                throw;
            }
        });
    }
}
