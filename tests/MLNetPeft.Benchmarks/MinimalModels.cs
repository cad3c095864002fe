using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Benchmarks;

// Baselines: the same architectures written as plainly as TorchSharp allows (nanoGPT-style), with none of the
// library's generality (no cache, no masks, no config parsing). The library's step time is measured against these.

/// <summary>Minimal GPT-2: learned positions, pre-LayerNorm blocks, fused-kernel causal attention, tied head.</summary>
internal sealed class MinimalGpt2 : nn.Module<Tensor, Tensor>
{
    private readonly Embedding wte, wpe;
    private readonly ModuleList<Block> blocks;
    private readonly LayerNorm lnF;

    public MinimalGpt2(int vocab, int positions, int dim, int layers, int heads) : base(nameof(MinimalGpt2))
    {
        wte = nn.Embedding(vocab, dim);
        wpe = nn.Embedding(positions, dim);
        blocks = nn.ModuleList(Enumerable.Range(0, layers).Select(_ => new Block(dim, heads)).ToArray());
        lnF = nn.LayerNorm(dim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids)
    {
        using var scope = NewDisposeScope();
        var x = wte.forward(ids) + wpe.forward(arange(ids.shape[1], device: ids.device));
        foreach (var b in blocks) x = b.forward(x);
        return nn.functional.linear(lnF.forward(x), wte.weight!).MoveToOuterDisposeScope();
    }

    private sealed class Block : nn.Module<Tensor, Tensor>
    {
        private readonly LayerNorm ln1, ln2;
        private readonly Linear qkv, proj, fc, fcProj;
        private readonly int heads;

        public Block(int dim, int heads) : base(nameof(Block))
        {
            this.heads = heads;
            ln1 = nn.LayerNorm(dim);
            ln2 = nn.LayerNorm(dim);
            qkv = nn.Linear(dim, 3 * dim);
            proj = nn.Linear(dim, dim);
            fc = nn.Linear(dim, 4 * dim);
            fcProj = nn.Linear(4 * dim, dim);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            long b = x.shape[0], t = x.shape[1], c = x.shape[2];
            var parts = qkv.forward(ln1.forward(x)).split(c, 2);
            var q = parts[0].view(b, t, heads, -1).transpose(1, 2);
            var k = parts[1].view(b, t, heads, -1).transpose(1, 2);
            var v = parts[2].view(b, t, heads, -1).transpose(1, 2);
            var y = nn.functional.scaled_dot_product_attention(q, k, v, null, 0.0, true).transpose(1, 2).contiguous().view(b, t, c);
            x = x + proj.forward(y);
            x = x + fcProj.forward(nn.functional.gelu(fc.forward(ln2.forward(x)), GELU.Approximate.tanh));
            return x.MoveToOuterDisposeScope();
        }
    }
}

/// <summary>Minimal Llama: RMSNorm, rotary positions, grouped-query attention, SwiGLU, untied head.</summary>
internal sealed class MinimalLlama : nn.Module<Tensor, Tensor>
{
    private readonly Embedding embed;
    private readonly ModuleList<Block> blocks;
    private readonly Parameter normWeight;
    private readonly Linear? head;
    private readonly Tensor invFreq;

    public MinimalLlama(int vocab, int dim, int hidden, int layers, int heads, int kvHeads, bool tiedHead = false) : base(nameof(MinimalLlama))
    {
        embed = nn.Embedding(vocab, dim);
        blocks = nn.ModuleList(Enumerable.Range(0, layers).Select(_ => new Block(dim, hidden, heads, kvHeads)).ToArray());
        normWeight = nn.Parameter(ones(dim));
        head = tiedHead ? null : nn.Linear(dim, vocab, hasBias: false);
        int headDim = dim / heads;
        invFreq = (1.0 / pow(10000.0, arange(0, headDim, 2, dtype: ScalarType.Float32) / headDim)).DetachFromDisposeScope();
        RegisterComponents();
    }

    private static Tensor Rms(Tensor x, Tensor w) => w * (x * rsqrt(x.pow(2).mean([-1L], keepdim: true) + 1e-6));

    public override Tensor forward(Tensor ids)
    {
        using var scope = NewDisposeScope();
        var freqs = arange(ids.shape[1], dtype: ScalarType.Float32).unsqueeze(1) * invFreq;
        var emb = cat([freqs, freqs], -1);
        var (cos, sin) = (emb.cos(), emb.sin());
        var x = embed.forward(ids);
        foreach (var b in blocks) x = b.Forward(x, cos, sin);
        var final = Rms(x, normWeight);
        return (head is null ? nn.functional.linear(final, embed.weight!) : head.forward(final)).MoveToOuterDisposeScope();
    }

    private sealed class Block : nn.Module
    {
        private readonly Parameter n1, n2;
        private readonly Linear q, k, v, o, gate, up, down;
        private readonly int heads, kvHeads;

        public Block(int dim, int hidden, int heads, int kvHeads) : base(nameof(Block))
        {
            this.heads = heads;
            this.kvHeads = kvHeads;
            int headDim = dim / heads;
            n1 = nn.Parameter(ones(dim));
            n2 = nn.Parameter(ones(dim));
            q = nn.Linear(dim, dim, hasBias: false);
            k = nn.Linear(dim, kvHeads * headDim, hasBias: false);
            v = nn.Linear(dim, kvHeads * headDim, hasBias: false);
            o = nn.Linear(dim, dim, hasBias: false);
            gate = nn.Linear(dim, hidden, hasBias: false);
            up = nn.Linear(dim, hidden, hasBias: false);
            down = nn.Linear(hidden, dim, hasBias: false);
            RegisterComponents();
        }

        private static Tensor Rotate(Tensor x, Tensor cos, Tensor sin)
        {
            long half = x.shape[^1] / 2;
            return x * cos + cat([-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1) * sin;
        }

        public Tensor Forward(Tensor x, Tensor cos, Tensor sin)
        {
            using var scope = NewDisposeScope();
            long b = x.shape[0], t = x.shape[1], c = x.shape[2];
            var h = Rms(x, n1);
            var qh = Rotate(q.forward(h).view(b, t, heads, -1).transpose(1, 2), cos, sin);
            var kh = Rotate(k.forward(h).view(b, t, kvHeads, -1).transpose(1, 2), cos, sin).repeat_interleave(heads / kvHeads, dim: 1);
            var vh = v.forward(h).view(b, t, kvHeads, -1).transpose(1, 2).repeat_interleave(heads / kvHeads, dim: 1);
            var y = nn.functional.scaled_dot_product_attention(qh, kh, vh, null, 0.0, true).transpose(1, 2).contiguous().view(b, t, c);
            x = x + o.forward(y);
            var m = Rms(x, n2);
            x = x + down.forward(nn.functional.silu(gate.forward(m)) * up.forward(m));
            return x.MoveToOuterDisposeScope();
        }
    }
}
