using System.Text.Json.Nodes;
using MLNetPeft.Architectures;
using MLNetPeft.Architectures.Layers;
using MLNetPeft.Checkpoints;
using MLNetPeft.Tuners.AdaLora;
using MLNetPeft.Tuners.Ia3;
using MLNetPeft.Tuners.Lora;
using MLNetPeft.Tuners.PromptTuning;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MLNetPeft.Tuners.Tests;

/// <summary>
/// Adapter folders written by Python PEFT (../shared/data/peft_adapters): each loads through our reader onto a model of
/// its base architecture (built from the base's public config, random weights), every tensor lands on a module of the
/// right shape, and our writer, given what was loaded, writes the same keys, shapes, dtypes and config. PEFT's own
/// regression fixtures also carry the output PEFT computed (output.pt): ours must equal it.
/// </summary>
public class PeftConformanceTests(Xunit.Abstractions.ITestOutputHelper output)
{
    /// <summary>PEFT's regression base (tests/regression/test_regression.py): lin0 = Linear(10, 20), ReLU, lin1 = Linear(20, 2), LogSoftmax.</summary>
    private sealed class RegressionMlp : nn.Module<Tensor, Tensor>
    {
        private readonly Linear _lin0, _lin1;

        public RegressionMlp() : base("MLP")
        {
            _lin0 = nn.Linear(10, 20);
            _lin1 = nn.Linear(20, 2);
            register_module("lin0", _lin0);
            register_module("lin1", _lin1);
            // PEFT's test builds lin0 then lin1 right after torch.manual_seed(0). The same draws, in the same order, from a
            // generator of our own seeded 0 (the process-wide one is shared with tests running in parallel): nn.Linear's
            // kaiming_uniform_(a = √5) on the weight, U(±1/√in) on the bias.
            var generator = new Generator(0);
            using var _ = no_grad();
            foreach (var linear in new[] { _lin0, _lin1 })
            {
                double fanIn = linear.in_features, gain = Math.Sqrt(2.0 / (1 + 5)), std = gain / Math.Sqrt(fanIn);
                linear.weight!.uniform_(-Math.Sqrt(3.0) * std, Math.Sqrt(3.0) * std, generator);
                linear.bias!.uniform_(-1 / Math.Sqrt(fanIn), 1 / Math.Sqrt(fanIn), generator);
            }
        }

        protected override void RegisterComponents() { }

        public override Tensor forward(Tensor x) =>
            nn.functional.log_softmax(_lin1.call(nn.functional.relu(_lin0.call(x.to(ScalarType.Float32)))), -1);
    }

    /// <summary>
    /// The linear layers of a base too large to build (or of an architecture this library lacks), with the names and
    /// shapes its public config implies. Their weights take no memory (a zero-stride view); a head that the adapter
    /// file carries whole (modules_to_save) is a real layer, so the file's values can land in it.
    /// </summary>
    private sealed class Skeleton : nn.Module
    {
        public Skeleton(IEnumerable<(string Name, long In, long Out)> layers, IEnumerable<(string Name, long In, long Out)>? heads = null) : base("Skeleton")
        {
            var root = new Dictionary<string, object>(StringComparer.Ordinal);
            foreach (var (name, inFeatures, outFeatures) in layers)
            {
                var linear = nn.Linear(inFeatures, outFeatures, hasBias: false, device: new Device(TorchSharp.DeviceType.META));
                linear.weight = new Parameter(zeros(1).expand(outFeatures, inFeatures), requires_grad: false);
                Place(root, name, linear);
            }
            foreach (var (name, inFeatures, outFeatures) in heads ?? []) Place(root, name, nn.Linear(inFeatures, outFeatures));
            foreach (var (name, child) in root) register_module(name, Build(name, child));
        }

        protected override void RegisterComponents() { }

        private static void Place(Dictionary<string, object> root, string name, nn.Module layer)
        {
            var parts = name.Split('.');
            var node = root;
            foreach (var part in parts[..^1])
            {
                if (!node.TryGetValue(part, out var next)) node[part] = next = new Dictionary<string, object>(StringComparer.Ordinal);
                node = (Dictionary<string, object>)next;
            }
            node[parts[^1]] = layer;
        }

        private static nn.Module Build(string name, object node) => node is nn.Module m ? m
            : new Container(name, ((Dictionary<string, object>)node).Select(kv => (kv.Key, Build(kv.Key, kv.Value))).ToArray());
    }

    private static IEnumerable<(string, long, long)> Layers(int count, string prefix, params (string Name, long In, long Out)[] perLayer) =>
        Enumerable.Range(0, count).SelectMany(i => perLayer.Select(l => ($"{prefix}.{i}.{l.Name}", l.In, l.Out)));

    /// <summary>The base each folder's adapter belongs to, built from that base's public config.</summary>
    private static nn.Module BaseOf(string folder) => folder switch
    {
        "peft_regr_lora_mlp" or "peft_regr_ia3_mlp" or "peft_regr_ia3_no_ff_mlp" or "peft_regr_adalora_mlp" => new RegressionMlp(),
        // gpt2: 12 layers, 768 wide, vocab 50257 (Gpt2Config's defaults are GPT-2 small's).
        "gpt2_lora_seqcls_emotion" => new Gpt2ForCausalLM(new Gpt2Config()),
        // prajjwal1/bert-tiny: 2 layers, 128 wide, 2 heads, intermediate 512; five classes in this task.
        "adalora_berttiny_seqcls" => new BertForSequenceClassification(new BertModel(new BertConfig
            { VocabSize = 30522, HiddenSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 2, IntermediateSize = 512, MaxPositionEmbeddings = 512 }, addPoolingLayer: true), 5, SequencePooling.Cls),
        // Maykeye/TinyLLama-v0: 8 layers, 64 wide, 16 heads, intermediate 256, vocab 32000.
        "lora_tinyllama_v0_fms" => new LlamaForCausalLM(new LlamaConfig
            { VocabSize = 32000, HiddenSize = 64, IntermediateSize = 256, NumHiddenLayers = 8, NumAttentionHeads = 16, MaxPositionEmbeddings = 2048 }),
        // A prompt-tuning file fits any model of its token_dim (bigscience/bloomz-560m: 1024); one small Llama layer of that width.
        "prompt_tuning_bloomz560m" => new LlamaForCausalLM(new LlamaConfig
            { VocabSize = 64, HiddenSize = 1024, IntermediateSize = 16, NumHiddenLayers = 1, NumAttentionHeads = 16, MaxPositionEmbeddings = 64 }),
        // Qwen/Qwen2.5-0.5B-Instruct: 24 layers, 896 wide, 14 heads of 64, 2 key/value heads, intermediate 4864.
        "lora_qwen25_05b_qv" => new Skeleton(Layers(24, "model.layers", ("self_attn.q_proj", 896, 896), ("self_attn.k_proj", 896, 128), ("self_attn.v_proj", 896, 128),
            ("self_attn.o_proj", 896, 896), ("mlp.gate_proj", 896, 4864), ("mlp.up_proj", 896, 4864), ("mlp.down_proj", 4864, 896))),
        // distilbert-base-uncased: 6 layers, 768 wide, FFN 3072; the sequence classifier's pre_classifier and classifier (two classes).
        "distilbert_lora_seqcls_imdb" => new Skeleton(Layers(6, "distilbert.transformer.layer", ("attention.q_lin", 768, 768), ("attention.k_lin", 768, 768),
            ("attention.v_lin", 768, 768), ("attention.out_lin", 768, 768), ("ffn.lin1", 768, 3072), ("ffn.lin2", 3072, 768)),
            [("pre_classifier", 768, 768), ("classifier", 768, 2)]),
        // facebook/opt-350m: 24 decoder layers, 1024 wide, FFN 4096.
        "peft_regr_ia3_opt350m" => new Skeleton(Layers(24, "model.decoder.layers", ("self_attn.q_proj", 1024, 1024), ("self_attn.k_proj", 1024, 1024),
            ("self_attn.v_proj", 1024, 1024), ("self_attn.out_proj", 1024, 1024), ("fc1", 1024, 4096), ("fc2", 4096, 1024))),
        // bigscience/mt0-large (mT5-large): 24 encoder and 24 decoder blocks, d_model 1024, 16 heads of 64, gated FFN of 2816.
        "ia3_mt0large_pr719" => new Skeleton(
            Layers(24, "encoder.block", ("layer.0.SelfAttention.q", 1024, 1024), ("layer.0.SelfAttention.k", 1024, 1024), ("layer.0.SelfAttention.v", 1024, 1024),
                ("layer.0.SelfAttention.o", 1024, 1024), ("layer.1.DenseReluDense.wi_0", 1024, 2816), ("layer.1.DenseReluDense.wi_1", 1024, 2816), ("layer.1.DenseReluDense.wo", 2816, 1024))
            .Concat(Layers(24, "decoder.block", ("layer.0.SelfAttention.q", 1024, 1024), ("layer.0.SelfAttention.k", 1024, 1024), ("layer.0.SelfAttention.v", 1024, 1024),
                ("layer.0.SelfAttention.o", 1024, 1024), ("layer.1.EncDecAttention.q", 1024, 1024), ("layer.1.EncDecAttention.k", 1024, 1024), ("layer.1.EncDecAttention.v", 1024, 1024),
                ("layer.1.EncDecAttention.o", 1024, 1024), ("layer.2.DenseReluDense.wi_0", 1024, 2816), ("layer.2.DenseReluDense.wi_1", 1024, 2816), ("layer.2.DenseReluDense.wo", 2816, 1024)))),
        _ => throw new ArgumentOutOfRangeException(nameof(folder)),
    };

    /// <summary>Tensors of a file that belong to no module of the base (they are carried along, not applied).</summary>
    private static readonly Dictionary<string, string[]> NotApplied = new()
    {
        // The SEQ_CLS head of GPT2ForSequenceClassification; this base is the LM.
        ["gpt2_lora_seqcls_emotion"] = ["base_model.model.score.weight"],
        // Rows for five added tokens (a trimmed test artifact), not whole embeddings.
        ["lora_tinyllama_v0_fms"] = ["base_model.model.lm_head.weight", "base_model.model.model.embed_tokens.weight"],
    };

    public static TheoryData<string> Folders() =>
    [
        "gpt2_lora_seqcls_emotion", "distilbert_lora_seqcls_imdb", "adalora_berttiny_seqcls", "lora_qwen25_05b_qv", "lora_tinyllama_v0_fms",
        "prompt_tuning_bloomz560m", "peft_regr_lora_mlp", "peft_regr_ia3_mlp", "peft_regr_ia3_no_ff_mlp", "peft_regr_adalora_mlp",
        "peft_regr_ia3_opt350m", "ia3_mt0large_pr719",
    ];

    [SkippableTheory]
    [MemberData(nameof(Folders))]
    public void APeftFolderLoadsOntoItsBaseAndOurWriterReproducesIt(string name)
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        var folder = SharedData.Require(Path.Combine("peft_adapters", name));
        using var dir = new TempFolder();
        using var model = BaseOf(name);
        var peft = PeftAdapterFiles.Load(model, folder, out var unused);
        Assert.Equal(NotApplied.GetValueOrDefault(name, []).Order(), unused.Order());

        // Our writer, given what was loaded (and what was carried along), writes the same file.
        using var original = PeftAdapterFiles.OpenWeights(folder);
        var carried = unused.ToDictionary(k => k, original.ReadTensor);
        PeftAdapterFiles.Save(dir.Path, peft, additionalTensors: carried);
        using var written = PeftAdapterFiles.OpenWeights(dir.Path);
        Assert.Equal(original.TensorNames.Order(StringComparer.Ordinal), written.TensorNames.Order(StringComparer.Ordinal));
        foreach (var key in original.TensorNames)
        {
            Assert.Equal(original.ShapeOf(key), written.ShapeOf(key));
            Assert.Equal(original.DTypeOf(key), written.DTypeOf(key));
            using var a = original.ReadTensor(key);
            using var b = written.ReadTensor(key);
            TensorAssert.BitIdentical(a, b, key);
        }
        var sourceConfig = ReadJson(folder);
        Assert.True(JsonNode.DeepEquals(sourceConfig, ReadJson(dir.Path)), "adapter_config.json written back differs");

        // Written as a new adapter (no source config), our own fields agree with PEFT's wherever both write one.
        var asNew = Directory.CreateDirectory(dir.File("new")).FullName;
        var source = peft.SourceConfig;
        peft.SourceConfig = null;
        PeftAdapterFiles.Save(asNew, peft, additionalTensors: carried);
        peft.SourceConfig = source;
        var ours = ReadJson(asNew);
        var differing = ours.Where(kv => sourceConfig.ContainsKey(kv.Key) && !Comparable.Contains(kv.Key) && !StandInGeometry(name, kv.Key) && !SameValue(kv.Value, sourceConfig[kv.Key]))
            .Select(kv => kv.Key).ToList();
        Assert.True(differing.Count == 0, $"fields we write differently from PEFT: {string.Join(", ", differing.Select(k => $"{k}: ours {ours[k]?.ToJsonString()} vs {sourceConfig[k]?.ToJsonString()}"))}");
        var missing = sourceConfig.Select(kv => kv.Key).Where(k => !ours.ContainsKey(k)).ToList();
        output.WriteLine($"{name}: {peft.GetType().Name}, {original.TensorNames.Count} tensors ({original.TensorNames.Count - unused.Count} applied), file and config rewritten identically; " +
            $"as a new adapter {ours.Count} fields, {sourceConfig.Count(kv => ours.ContainsKey(kv.Key))} shared and equal; PEFT fields we do not write: {(missing.Count == 0 ? "none" : string.Join(", ", missing))}");
        // The fresh file loads here again like the original.
        using var fresh = BaseOf(name);
        var reloaded = PeftAdapterFiles.Load(fresh, asNew, out var unusedAgain);
        Assert.Equal(unused.Order(), unusedAgain.Order());
        Assert.Equal(peft.GetType(), reloaded.GetType());
    }

    /// <summary>Fields that describe where an adapter came from or list its targets in another, equivalent form.</summary>
    private static readonly HashSet<string> Comparable = ["base_model_name_or_path", "task_type", "target_modules", "feedforward_modules", "auto_mapping", "modules_to_save", "revision"];

    /// <summary>The prompt-tuning file is loaded onto a one-layer stand-in of BLOOM's width, whose layer count is its own.</summary>
    private static bool StandInGeometry(string folder, string field) => folder == "prompt_tuning_bloomz560m" && field == "num_layers";

    private static bool SameValue(JsonNode? a, JsonNode? b)
    {
        if (a is JsonValue x && b is JsonValue y && x.TryGetValue<double>(out var dx) && y.TryGetValue<double>(out var dy)) return dx == dy;
        if (a is JsonObject { Count: 0 } && b is null || a is null && b is JsonObject { Count: 0 }) return true;   // {} and null both mean "no pattern"
        return JsonNode.DeepEquals(a, b);
    }

    private static JsonObject ReadJson(string folder) => JsonNode.Parse(File.ReadAllText(Path.Combine(folder, PeftAdapterFiles.ConfigFileName)))!.AsObject();

    /// <summary>
    /// PEFT's regression fixtures: the base MLP rebuilt from manual_seed(0), the adapter read from PEFT's .bin through
    /// our weights-only reader and applied by our tuners, on x = arange(90).reshape(9, 10): the output PEFT recorded.
    /// </summary>
    [SkippableTheory]
    [InlineData("peft_regr_lora_mlp", 1e-6)]
    [InlineData("peft_regr_ia3_mlp", 1e-6)]
    [InlineData("peft_regr_ia3_no_ff_mlp", 1e-6)]
    [InlineData("peft_regr_adalora_mlp", 1e-6)]
    public void OurTunersOnPeftsRegressionMlpGiveTheOutputPeftRecorded(string name, double relativeTolerance)
    {
        using var testScope = NewDisposeScope();   // no test tensor is left to the finalizer
        var folder = SharedData.Require(Path.Combine("peft_adapters", name));
        using var model = new RegressionMlp();
        model.eval();
        var x = arange(90).reshape(9, 10);
        var peft = PeftAdapterFiles.Load(model, folder, out var unused);
        Assert.Empty(unused);
        using var recorded = TorchCheckpointFile.Open(Path.Combine(folder, "output.pt"));
        var expected = recorded.ReadTensor(TorchCheckpointFile.SingleTensorName);
        Tensor actual;
        using (no_grad()) actual = model.call(x);
        double scale = expected.abs().max().item<float>();
        double difference = (actual - expected).abs().max().item<float>();
        output.WriteLine($"{name}: {peft.GetType().Name}; largest difference from PEFT's output.pt {difference:E2} (outputs up to {scale:F2}, relative {difference / Math.Max(scale, 1):E2})");
        Assert.True(difference <= relativeTolerance * Math.Max(scale, 1), $"differs from PEFT's output by {difference:E3}");
        // Merged into the MLP's weights, the same output.
        peft.MergeAndUnload();
        using (no_grad()) TensorAssert.Close(expected, model.call(x), 2 * relativeTolerance * Math.Max(scale, 1), "merged");
    }
}
