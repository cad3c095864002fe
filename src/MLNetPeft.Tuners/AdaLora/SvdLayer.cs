using MLNetPeft.Runtime;
using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.AdaLora;

/// <summary>
/// AdaLoRA on one linear layer: ΔW = B·(A ⊙ E)·scaling / rank with A = Q [r, in], E = Λ [r, 1], B = P [out, r],
/// registered under the layer as PEFT's <c>lora_A.{adapter}</c>, <c>lora_E.{adapter}</c>, <c>lora_B.{adapter}</c>
/// and the fixed <c>ranknum.{adapter}</c> (init_r, which the scale divides by; PEFT does not save it). A and B start
/// N(0, 0.02²), E at zero, so a fresh adapter changes nothing; pruning a triplet sets its entry of E to zero.
/// </summary>
public sealed class SvdLayer
{
    private readonly nn.Module<Tensor, Tensor> _layer;
    private readonly string _adapterName;
    private readonly double _dropout;
    private readonly Action _removeHook;

    internal SvdLayer(string moduleName, nn.Module<Tensor, Tensor> layer, int rank, double initialRank, AdaLoraConfig config, string adapterName, Generator generator)
    {
        ModuleName = moduleName;
        _layer = layer;
        _adapterName = adapterName;
        _dropout = config.LoraDropout;
        (long inFeatures, long outFeatures, FanInFanOut) = TargetModules.Shape(layer, moduleName, "AdaLoRA");
        var weight = BaseWeight;
        A = new Parameter(randn([rank, inFeatures], dtype: weight.dtype, generator: generator).mul_(Scalars.Of(0.02)).to(weight.device));
        // E starts at zero (a fresh adapter changes nothing), or random with init_lora_weights = false, as in PEFT.
        E = new Parameter(config.InitLoraWeights ? zeros([rank, 1], dtype: weight.dtype, device: weight.device)
            : randn([rank, 1], dtype: weight.dtype, generator: generator).to(weight.device));
        B = new Parameter(randn([outFeatures, rank], dtype: weight.dtype, generator: generator).mul_(Scalars.Of(0.02)).to(weight.device));
        RankNum = new Parameter(full(1, Scalars.Of(initialRank), dtype: weight.dtype, device: weight.device), requires_grad: false);
        Scaling = config.Scaling;
        TargetModules.RegisterAdapterChild(layer, "lora_A", adapterName, A);
        TargetModules.RegisterAdapterChild(layer, "lora_E", adapterName, E);
        TargetModules.RegisterAdapterChild(layer, "lora_B", adapterName, B);
        TargetModules.RegisterAdapterChild(layer, "ranknum", adapterName, RankNum);
        var hook = layer.register_forward_hook((_, input, output) => Enabled && !Merged ? output.Plus(Delta(input)) : output);
        _removeHook = hook.remove;
    }

    public string ModuleName { get; }
    public bool FanInFanOut { get; }
    public Parameter A { get; }
    public Parameter E { get; }
    public Parameter B { get; }
    public Parameter RankNum { get; }
    public double Scaling { get; }
    public bool Enabled { get; set; } = true;
    public bool Merged { get; private set; }
    /// <summary>Triplets still in use (non-zero entries of E).</summary>
    public int ActiveRank
    {
        get
        {
            using var scope = NewDisposeScope();
            return (int)E.ne(Scalars.Of(0.0)).sum().item<long>();
        }
    }
    private Parameter BaseWeight => TargetModules.Weight(_layer);
    private Tensor Scale => RankNum.Plus(1e-5);

    private Tensor Delta(Tensor input)
    {
        var x = StepDropout.Apply(TargetModules.CallInput(_layer, input), _dropout, _layer.training);
        return x.matmul((A * E).t()).matmul(B.t()).Times(Scaling) / Scale;
    }

    /// <summary>ΔW in the base weight's layout.</summary>
    public Tensor DeltaWeight()
    {
        var delta = B.matmul(A * E).Times(Scaling) / Scale;
        return FanInFanOut ? delta.t() : delta;
    }

    public void Merge()
    {
        if (Merged) return;
        if (TargetModules.IsQuantized(_layer))
            throw new InvalidOperationException($"'{ModuleName}' is NF4-quantised: dequantise the base (Nf4Model.Dequantize) before merging AdaLoRA into it.");
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var merged = BaseWeight.Plus(DeltaWeight());
        if (!merged.isfinite().all().item<bool>())
            throw new InvalidOperationException($"Merging the AdaLoRA adapter of '{ModuleName}' would give non-finite weights; the model was left unmerged.");
        BaseWeight.copy_(merged);
        Merged = true;
    }

    public void Unmerge()
    {
        if (!Merged) return;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        BaseWeight.sub_(DeltaWeight());
        Merged = false;
    }

    internal void Remove()
    {
        _removeHook();
        foreach (var group in new[] { "lora_A", "lora_E", "lora_B", "ranknum" }) TargetModules.RemoveAdapterChild(_layer, group, _adapterName);
    }
}
