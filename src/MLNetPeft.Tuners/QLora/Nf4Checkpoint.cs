using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using MLNetPeft.Checkpoints;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.QLora;

/// <summary>
/// Checkpoint folders whose linear weights are stored NF4-quantised, in the layout transformers writes for
/// bitsandbytes 4-bit models: per layer <c>{name}.weight</c> (uint8 codes [n/2, 1]), <c>.weight.absmax</c>,
/// <c>.weight.quant_map</c>, with double quantisation <c>.weight.nested_absmax</c> and <c>.weight.nested_quant_map</c>,
/// and <c>.weight.quant_state.bitsandbytes__nf4</c> (the quantisation state as JSON bytes); config.json carries a
/// <c>quantization_config</c>. The weights stay quantised on disk and in memory.
/// </summary>
public static class Nf4Checkpoint
{
    private const string StateSuffix = ".weight.quant_state.bitsandbytes__nf4";

    /// <summary>Whether the checkpoint folder's config.json says its weights are 4-bit quantised.</summary>
    public static bool IsQuantized(string folder)
    {
        var path = Path.Combine(folder, "config.json");
        // A missing, oversized or malformed config is not quantised here; loading the checkpoint reports what is wrong with it.
        if (!File.Exists(path) || new FileInfo(path).Length > PretrainedModels.MaxConfigBytes) return false;
        try
        {
            var q = (JsonNode.Parse(File.ReadAllText(path)) as JsonObject)?["quantization_config"] as JsonObject;
            return q?["load_in_4bit"]?.GetValue<bool>() == true;
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            return false;
        }
    }

    /// <summary>Saves <paramref name="model"/> with the layers of <paramref name="quantized"/> in their quantised form.</summary>
    public static void Save(string folder, PretrainedModule model, Nf4Model quantized)
    {
        using var scope = NewDisposeScope();
        var quantizedWeights = quantized.Layers.Select(l => l.ModuleName + ".weight").ToHashSet(StringComparer.Ordinal);
        var tensors = model.state_dict().Where(kv => !quantizedWeights.Contains(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value);
        foreach (var layer in quantized.Layers)
        {
            var w = layer.Weight;
            string key = layer.ModuleName + ".weight";
            tensors[key] = tensor(w.Packed, [w.Packed.Length, 1]);
            tensors[key + ".quant_map"] = tensor(Nf4.Code);
            var state = new JsonObject
            {
                ["quant_type"] = "nf4", ["blocksize"] = w.BlockSize, ["dtype"] = DTypeName(layer.WeightDtype),
                ["shape"] = new JsonArray(w.Shape.Select(d => (JsonNode)JsonValue.Create(d)!).ToArray()),
            };
            if (w.Nested is { } nested)
            {
                tensors[key + ".absmax"] = tensor(w.AbsmaxCodes!);
                tensors[key + ".nested_absmax"] = tensor(nested.Absmax);
                tensors[key + ".nested_quant_map"] = tensor(Nf4.DynamicMap());
                state["nested_blocksize"] = Nf4.DoubleQuantBlockSize;
                state["nested_offset"] = nested.Offset;
                state["nested_dtype"] = "float32";
            }
            else
            {
                tensors[key + ".absmax"] = tensor(w.Absmax!);
            }
            tensors[layer.ModuleName + StateSuffix] = tensor(Encoding.UTF8.GetBytes(state.ToJsonString()));
        }
        model.Config.Extra ??= [];
        model.Config.Extra["quantization_config"] = JsonSerializer.SerializeToElement(new JsonObject
        {
            ["quant_method"] = "bitsandbytes", ["load_in_4bit"] = true, ["bnb_4bit_quant_type"] = "nf4",
            ["bnb_4bit_use_double_quant"] = quantized.Config.UseDoubleQuant,
            ["bnb_4bit_compute_dtype"] = DTypeName(quantized.Layers.FirstOrDefault()?.ComputeDtype ?? ScalarType.Float32),
        });
        model.SaveTensors(folder, tensors);
    }

    /// <summary>Loads a quantised causal LM checkpoint folder: the model with its quantised layers attached (frozen).</summary>
    /// <remarks>The weights that stay unquantised take <paramref name="options"/>' dtype (by default the stored one); codes and scales go to its device.</remarks>
    public static (CausalLanguageModel Model, Nf4Model Quantized) LoadCausalLM(string folder, ModelLoadOptions? options = null) =>
        Load(folder, options, (config, _) => PretrainedModels.CreateCausalLM(config));

    /// <summary>Loads a quantised BERT encoder checkpoint folder (e.g. the base of a QLoRA text classifier).</summary>
    public static (BertModel Model, Nf4Model Quantized) LoadBert(string folder, ModelLoadOptions? options = null) =>
        Load(folder, options, (config, checkpoint) => config is BertConfig bert
            ? new BertModel(bert, addPoolingLayer: checkpoint.TensorNames.Any(n => n.StartsWith("pooler.dense.", StringComparison.Ordinal)))
            : throw new NotSupportedException($"Checkpoint '{folder}' is a '{config.ModelType}' model, not a BERT encoder."));

    private static (T Model, Nf4Model Quantized) Load<T>(string folder, ModelLoadOptions? options, Func<ModelConfig, CheckpointWeights, T> create) where T : PretrainedModule
    {
        options ??= ModelLoadOptions.AsStored(folder);
        var config = PretrainedModels.LoadConfig(folder);
        using var checkpoint = CheckpointWeights.Open(folder);
        // A quantised weight holds two 4-bit codes per stored byte.
        var quantisedWeights = checkpoint.TensorNames.Where(n => n.EndsWith(StateSuffix, StringComparison.Ordinal)).Select(n => n[..^StateSuffix.Length] + ".weight")
            .Where(checkpoint.Contains).ToList();
        PretrainedModels.CheckSizes(config, checkpoint, folder, quantisedWeights.Sum(n => checkpoint.ShapeOf(n).Aggregate(1L, (a, b) => a * b)));
        var model = create(config, checkpoint);
        try
        {
            var layerNames = checkpoint.TensorNames.Where(n => n.EndsWith(StateSuffix, StringComparison.Ordinal)).Select(n => n[..^StateSuffix.Length]).Order(StringComparer.Ordinal).ToList();
            if (layerNames.Count == 0) throw new InvalidDataException($"'{folder}' has no quantised layers ({StateSuffix}).");
            model.LoadWeights(checkpoint, folder, layerNames.Select(n => n + ".weight").ToHashSet(StringComparer.Ordinal));
            var modules = model.named_modules().ToDictionary(m => m.name, m => m.module);
            var layers = new List<(string, Linear, Nf4Tensor)>();
            var blockSize = Nf4.DefaultBlockSize;
            bool doubleQuant = false;
            foreach (var name in layerNames)
            {
                if (!modules.TryGetValue(name, out var module) || module is not Linear linear)
                    throw new InvalidDataException($"'{folder}': quantised layer '{name}' is not a linear layer of this {model.GetType().Name}.");
                var weight = ReadNf4(checkpoint, name, folder);
                if (!weight.Shape.SequenceEqual(linear.weight!.shape))
                    throw new InvalidDataException($"'{folder}': quantised '{name}.weight' has shape [{string.Join(", ", weight.Shape)}] but the config implies [{string.Join(", ", linear.weight.shape)}].");
                blockSize = weight.BlockSize;
                doubleQuant |= weight.Nested is not null;
                layers.Add((name, linear, weight));
            }
            foreach (var (_, p) in model.named_parameters()) p.requires_grad = false;
            PretrainedModels.Place(model, options);
            var nf4 = Nf4Model.Attach(model, new Nf4QuantizationConfig { BlockSize = blockSize, UseDoubleQuant = doubleQuant, ComputeDtype = ComputeDtypeOf(config, folder) }, layers);
            model.eval();
            return (model, nf4);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    private static Nf4Tensor ReadNf4(CheckpointWeights checkpoint, string name, string folder)
    {
        string key = name + ".weight";
        JsonObject state;
        try
        {
            using var stateBytes = checkpoint.ReadTensor(name + StateSuffix);
            state = JsonNode.Parse(Encoding.UTF8.GetString(stateBytes.data<byte>().ToArray())) as JsonObject ?? throw new InvalidDataException("not a JSON object");
        }
        catch (Exception e) when (e is JsonException or InvalidDataException)
        {
            throw new InvalidDataException($"'{folder}': the quantisation state of '{name}' is unreadable: {e.Message}", e);
        }
        long[] shape;
        int blockSize;
        try
        {
            if (state["quant_type"]?.GetValue<string>() != "nf4")
                throw new NotSupportedException($"'{folder}': '{name}' is quantised as '{state["quant_type"]}'; this library reads nf4.");
            shape = (state["shape"] as JsonArray ?? throw new InvalidDataException("it has no shape")).Select(d => d!.GetValue<long>()).ToArray();
            blockSize = state["blocksize"]?.GetValue<int>() ?? throw new InvalidDataException("it has no blocksize");
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException or InvalidDataException)
        {
            throw new InvalidDataException($"'{folder}': the quantisation state of '{name}' is malformed: {e.Message}", e);
        }
        if (shape.Length is 0 or > 8 || shape.Any(d => d is <= 0 or > 1L << 32) || shape.Aggregate(1.0, (a, b) => a * b) > 1L << 40 || blockSize is <= 0 or > 1 << 20 || blockSize % 2 != 0)
            throw new InvalidDataException($"'{folder}': the quantisation state of '{name}' has an invalid shape or block size.");
        foreach (var required in new[] { key, key + ".quant_map", key + ".absmax" })
            if (!checkpoint.Contains(required)) throw new InvalidDataException($"'{folder}': quantised '{name}' lacks '{required}'.");
        using var quantMap = checkpoint.ReadTensor(key + ".quant_map");
        if (quantMap.dtype != ScalarType.Float32 || !quantMap.data<float>().ToArray().SequenceEqual(Nf4.Code))
            throw new InvalidDataException($"'{folder}': '{key}.quant_map' is not the NF4 table.");
        // The stored sizes must be the ones the shape and block size imply before anything is read (Nf4Tensor checks again).
        long blocks = (shape.Aggregate(1L, (a, b) => a * b) + blockSize - 1) / blockSize;
        bool nestedScales = state["nested_offset"] is JsonValue;
        if (Count(checkpoint, key) * 2 != blocks * blockSize || Count(checkpoint, key + ".absmax") != blocks ||
            checkpoint.DTypeOf(key) != ScalarType.Byte || checkpoint.DTypeOf(key + ".absmax") != (nestedScales ? ScalarType.Byte : ScalarType.Float32) ||
            (nestedScales && (!checkpoint.Contains(key + ".nested_absmax") || checkpoint.DTypeOf(key + ".nested_absmax") != ScalarType.Float32 ||
                              Count(checkpoint, key + ".nested_absmax") != (blocks + Nf4.DoubleQuantBlockSize - 1) / Nf4.DoubleQuantBlockSize)))
            throw new InvalidDataException($"'{folder}': the stored codes or scales of '{name}' do not fit its shape [{string.Join(", ", shape)}] and block size {blockSize}.");
        using var packed = checkpoint.ReadTensor(key);
        var codes = packed.data<byte>().ToArray();
        if (state["nested_offset"] is JsonValue offset)
        {
            using var absmax = checkpoint.ReadTensor(key + ".absmax");
            using var nested = checkpoint.ReadTensor(key + ".nested_absmax");
            float nestedOffset;
            try { nestedOffset = offset.GetValue<float>(); }
            catch (Exception e) when (e is InvalidOperationException or FormatException) { throw new InvalidDataException($"'{folder}': nested_offset of '{name}' is not a number.", e); }
            return new Nf4Tensor(codes, absmax.data<byte>().ToArray(), new Nf4Tensor.NestedScales(nested.data<float>().ToArray(), nestedOffset), shape, blockSize);
        }
        using (var absmax = checkpoint.ReadTensor(key + ".absmax"))
            return new Nf4Tensor(codes, absmax.data<float>().ToArray(), null, shape, blockSize);
    }

    private static long Count(ITensorReader checkpoint, string name) => checkpoint.ShapeOf(name).Aggregate(1L, (a, b) => a * b);

    /// <summary>bnb_4bit_compute_dtype of the checkpoint's quantization_config (null: the layers' own dtype).</summary>
    private static ScalarType? ComputeDtypeOf(ModelConfig config, string folder)
    {
        if (config.Extra?.TryGetValue("quantization_config", out var q) != true || q.ValueKind != JsonValueKind.Object ||
            !q.TryGetProperty("bnb_4bit_compute_dtype", out var dtype) || dtype.ValueKind != JsonValueKind.String) return null;
        return dtype.GetString() switch
        {
            "float32" => ScalarType.Float32, "bfloat16" => ScalarType.BFloat16, "float16" => ScalarType.Float16,
            var other => throw new InvalidDataException($"'{folder}': bnb_4bit_compute_dtype '{other}' is not float32, bfloat16 or float16."),
        };
    }

    private static string DTypeName(ScalarType dtype) => dtype switch
    {
        ScalarType.BFloat16 => "bfloat16", ScalarType.Float16 => "float16", _ => "float32",
    };
}
