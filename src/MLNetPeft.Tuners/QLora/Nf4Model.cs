using MLNetPeft.Architectures;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.QLora;

/// <summary>Settings of 4-bit quantisation, with the names of transformers' BitsAndBytesConfig where they exist.</summary>
public sealed class Nf4QuantizationConfig
{
    /// <summary>NF4 block size (bitsandbytes: 64).</summary>
    public int BlockSize { get; set; } = Nf4.DefaultBlockSize;
    /// <summary>bnb_4bit_use_double_quant: store the block scales in 8 bits (QLoRA's default: true).</summary>
    public bool UseDoubleQuant { get; set; } = true;
    /// <summary>Linear layers to quantise (names or "all-linear"); null quantises every linear layer but the output head, as transformers does.</summary>
    public IReadOnlyList<string>? TargetModules { get; set; }
    /// <summary>bnb_4bit_compute_dtype: the dtype the dequantised products run in (Float32 or BFloat16); null takes the layer's dtype.</summary>
    public ScalarType? ComputeDtype { get; set; }

    public void Validate()
    {
        if (BlockSize <= 0 || BlockSize % 2 != 0) throw new ArgumentOutOfRangeException(nameof(BlockSize), BlockSize, "must be a positive even number");
        if (ComputeDtype is not (null or ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentOutOfRangeException(nameof(ComputeDtype), ComputeDtype, "bnb_4bit_compute_dtype must be Float32, BFloat16 or Float16");
    }
}

/// <summary>
/// A model whose linear layers hold NF4-quantised, frozen weights (transformers' load_in_4bit): QLoRA's base. LoRA is
/// applied on top with <see cref="Lora.LoraModel.Apply"/> as usual.
/// </summary>
public sealed class Nf4Model
{
    private readonly List<Nf4Linear> _layers;

    private Nf4Model(nn.Module model, Nf4QuantizationConfig config, List<Nf4Linear> layers)
    {
        Model = model;
        Config = config;
        _layers = layers;
    }

    public nn.Module Model { get; }
    public Nf4QuantizationConfig Config { get; }
    public IReadOnlyList<Nf4Linear> Layers => _layers;

    /// <summary>Quantises the target linear layers of <paramref name="model"/> in place and freezes them.</summary>
    public static Nf4Model Quantize(nn.Module model, Nf4QuantizationConfig? config = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        config ??= new Nf4QuantizationConfig();
        config.Validate();
        var targets = TargetModules.Select(model, config.TargetModules, null, [TargetModules.AllLinear], "TargetModules");
        var notLinear = targets.Where(t => t.Layer is not Linear).Select(t => t.Name).ToList();
        if (notLinear.Count > 0)
            throw new NotSupportedException($"NF4 quantisation supports nn.Linear layers; {string.Join(", ", notLinear.Take(3))} are GPT-2 Conv1D layers.");
        var layers = new List<Nf4Linear>();
        using (no_grad())
        {
            foreach (var (name, layer) in targets)
            {
                var linear = (Linear)layer;
                layers.Add(new Nf4Linear(name, linear, Nf4.Quantize(linear.weight!, config.BlockSize, config.UseDoubleQuant), config.ComputeDtype));
            }
        }
        foreach (var (_, p) in model.named_parameters()) p.requires_grad = false;
        return new Nf4Model(model, config, layers);
    }

    /// <summary>Bytes of the quantised weights (codes and scales) and of the same weights in float32.</summary>
    public (long Quantized, long Float32) WeightBytes()
    {
        long quantized = (long)_layers.Sum(l => l.Weight.BitsPerParameter * l.Weight.Count / 8);
        return (quantized, _layers.Sum(l => l.Weight.Count * 4));
    }

    /// <summary>Replaces every quantised weight by its dequantised values (e.g. to merge LoRA into a plain model).</summary>
    public void Dequantize()
    {
        foreach (var l in _layers) l.Dequantize();
        _layers.Clear();
    }

    internal static Nf4Model Attach(nn.Module model, Nf4QuantizationConfig config, IEnumerable<(string Name, Linear Layer, Nf4Tensor Weight)> layers) =>
        new(model, config, layers.Select(l => new Nf4Linear(l.Name, l.Layer, l.Weight, config.ComputeDtype)).ToList());
}
