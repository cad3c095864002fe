using MLNetPeft.Runtime;
using MLNetPeft.Checkpoints;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Training;

/// <summary>
/// Adam with decoupled weight decay (Loshchilov and Hutter 2019), PyTorch's <c>AdamW</c> update:
/// p ← p·(1 − lr·λ); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; p ← p − lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε).
/// Written here rather than taken from TorchSharp so that its state is plain tensors that checkpoints store as
/// safetensors and restore exactly. Parameters of lower precision (bf16) are updated through float32 master copies.
/// </summary>
public sealed class AdamW : IDisposable
{
    private readonly List<(string Name, Parameter Parameter, Tensor Master, Tensor ExpAvg, Tensor ExpAvgSq, bool Decay)> _groups = [];

    /// <param name="parameters">Named trainable parameters.</param>
    /// <param name="decay">Whether a parameter gets weight decay; by default matrices do and vectors (biases, norms) do not.</param>
    public AdamW(IEnumerable<(string Name, Parameter Parameter)> parameters, double beta1 = 0.9, double beta2 = 0.999, double epsilon = 1e-8,
        double weightDecay = 0.01, Func<string, Parameter, bool>? decay = null)
    {
        if (beta1 is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(beta1), beta1, "must be in [0, 1)");
        if (beta2 is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(beta2), beta2, "must be in [0, 1)");
        if (!(epsilon > 0)) throw new ArgumentOutOfRangeException(nameof(epsilon), epsilon, "must be positive");
        if (weightDecay < 0) throw new ArgumentOutOfRangeException(nameof(weightDecay), weightDecay, "must not be negative");
        Beta1 = beta1; Beta2 = beta2; Epsilon = epsilon; WeightDecay = weightDecay;
        decay ??= (_, p) => p.dim() >= 2;
        using var scope = NewDisposeScope();   // the state tensors leave it; temporaries do not
        foreach (var (name, p) in parameters)
        {
            var master = p.dtype == ScalarType.Float32 ? p : p.detach().to(ScalarType.Float32).DetachFromDisposeScope();
            _groups.Add((name, p, master, zeros_like(master).DetachFromDisposeScope(), zeros_like(master).DetachFromDisposeScope(), decay(name, p)));
        }
        if (_groups.Count == 0) throw new ArgumentException("There are no trainable parameters.", nameof(parameters));
    }

    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Epsilon { get; }
    public double WeightDecay { get; }
    /// <summary>Number of updates taken (t in the bias corrections).</summary>
    public long StepCount { get; private set; }

    /// <summary>Bytes held by the optimizer: two moments per parameter, plus float32 masters of lower-precision parameters.</summary>
    public long StateBytes => _groups.Sum(g => 2 * g.ExpAvg.numel() * 4 + (ReferenceEquals(g.Master, g.Parameter) ? 0 : g.Master.numel() * 4));

    /// <summary>One update with learning rate <paramref name="learningRate"/> from the parameters' current gradients.</summary>
    public void Step(double learningRate)
    {
        StepCount++;
        double correction1 = 1 - Math.Pow(Beta1, StepCount), correction2 = 1 - Math.Pow(Beta2, StepCount);
        using var _ = no_grad();
        // The step's own values change every step, so their Scalars are disposed with it; the betas are constants.
        using var decayFactor = Scalars.Owned(1 - learningRate * WeightDecay);
        using var inverseCorrection2 = Scalars.Owned(1 / correction2);
        using var stepSize = Scalars.Owned(-learningRate / correction1);
        foreach (var (_, p, master, m, v, decay) in _groups)
        {
            using var scope = NewDisposeScope();   // p.grad is a new tensor handle on every call
            if (p.grad is not { } grad) continue;
            var g = grad.dtype == ScalarType.Float32 ? grad : grad.to(ScalarType.Float32);
            if (decay && WeightDecay != 0) master.mul_(decayFactor);
            m.mul_(Scalars.Of(Beta1)).add_(g, alpha: Scalars.Of(1 - Beta1));
            v.mul_(Scalars.Of(Beta2)).addcmul_(g, g, value: Scalars.Of(1 - Beta2));
            var denominator = v.mul(inverseCorrection2).sqrt_().add_(Scalars.Of(Epsilon), Scalars.One);
            master.addcdiv_(m, denominator, value: stepSize);
            if (!ReferenceEquals(master, p)) p.copy_(master);
        }
    }

    public void ZeroGrad()
    {
        using var scope = NewDisposeScope();
        foreach (var g in _groups) g.Parameter.grad?.zero_();
    }

    /// <summary>The float32 values being optimised (the masters of bf16 parameters), by parameter name.</summary>
    public IReadOnlyDictionary<string, Tensor> MasterWeights => _groups.ToDictionary(g => g.Name, g => g.Master);

    /// <summary>Saves moments, masters and the step count as safetensors (atomically).</summary>
    public void Save(string path)
    {
        var tensors = new Dictionary<string, Tensor>();
        foreach (var (name, p, master, m, v, _) in _groups)
        {
            tensors["exp_avg." + name] = m;
            tensors["exp_avg_sq." + name] = v;
            if (!ReferenceEquals(master, p)) tensors["master." + name] = master;
        }
        SafetensorsWriter.Save(path, tensors, new Dictionary<string, string> { ["step"] = StepCount.ToString(System.Globalization.CultureInfo.InvariantCulture) });
    }

    /// <summary>Restores what <see cref="Save"/> wrote; the parameter names and shapes must match.</summary>
    public void Load(string path)
    {
        using var scope = NewDisposeScope();
        using var file = SafetensorsFile.Open(path);
        if (!file.Metadata.TryGetValue("step", out var step) || !long.TryParse(step, System.Globalization.CultureInfo.InvariantCulture, out var count))
            throw new InvalidDataException($"Optimizer state '{path}' has no step count.");
        foreach (var (name, p, master, m, v, _) in _groups)
        {
            if (!file.Contains("exp_avg." + name))
                throw new InvalidDataException($"Optimizer state '{path}' has no moments for parameter '{name}'.");
            file.ReadInto("exp_avg." + name, m);
            file.ReadInto("exp_avg_sq." + name, v);
            if (!ReferenceEquals(master, p)) file.ReadInto("master." + name, master);
        }
        StepCount = count;
    }

    public void Dispose()
    {
        foreach (var g in _groups)
        {
            g.ExpAvg.Dispose();
            g.ExpAvgSq.Dispose();
            if (!ReferenceEquals(g.Master, g.Parameter)) g.Master.Dispose();
        }
    }
}
