using System.Text;

namespace MLNetPeft.Checkpoints;

/// <summary>
/// What this library reads from an ONNX model file: its nodes (op type, inputs, outputs) and float32 initializers.
/// A small reader of the protobuf wire format, limited to the fields of ModelProto, GraphProto, NodeProto and
/// TensorProto that hold those; nothing in the file is executed. Used to take pretrained weights out of ONNX exports.
/// </summary>
public sealed class OnnxGraph
{
    public sealed record Node(string OpType, string Name, IReadOnlyList<string> Inputs, IReadOnlyList<string> Outputs);

    /// <summary>A float32 initializer: its shape and values (row-major).</summary>
    public sealed record Initializer(string Name, long[] Shape, float[] Values);

    private OnnxGraph(List<Node> nodes, Dictionary<string, Initializer> initializers, List<string> inputs, List<string> outputs)
    {
        Nodes = nodes;
        Initializers = initializers;
        Inputs = inputs;
        Outputs = outputs;
    }

    public IReadOnlyList<Node> Nodes { get; }
    public IReadOnlyDictionary<string, Initializer> Initializers { get; }
    public IReadOnlyList<string> Inputs { get; }
    public IReadOnlyList<string> Outputs { get; }

    public static OnnxGraph Read(ReadOnlySpan<byte> model, string source)
    {
        try
        {
            ReadOnlySpan<byte> graph = default;
            bool found = false;
            var reader = new ProtobufReader(model);
            while (reader.Next(out int field, out int wire))
            {
                if (field == 7 && wire == 2) { graph = reader.Bytes(); found = true; }   // ModelProto.graph
                else reader.Skip(wire);
            }
            if (!found) throw new InvalidDataException("it has no graph");
            return ReadGraph(graph);
        }
        catch (Exception e) when (e is InvalidDataException or IndexOutOfRangeException or ArgumentOutOfRangeException or OverflowException)
        {
            throw new InvalidDataException($"'{source}' is not a readable ONNX model: {e.Message}", e);
        }
    }

    private static OnnxGraph ReadGraph(ReadOnlySpan<byte> graph)
    {
        var nodes = new List<Node>();
        var initializers = new Dictionary<string, Initializer>(StringComparer.Ordinal);
        var inputs = new List<string>();
        var outputs = new List<string>();
        var reader = new ProtobufReader(graph);
        while (reader.Next(out int field, out int wire))
        {
            switch (field, wire)
            {
                case (1, 2): nodes.Add(ReadNode(reader.Bytes())); break;                       // node
                case (5, 2): if (ReadTensor(reader.Bytes()) is { } t) initializers[t.Name] = t; break;   // initializer
                case (11, 2): inputs.Add(ReadValueInfoName(reader.Bytes())); break;           // input
                case (12, 2): outputs.Add(ReadValueInfoName(reader.Bytes())); break;          // output
                default: reader.Skip(wire); break;
            }
        }
        return new OnnxGraph(nodes, initializers, inputs, outputs);
    }

    private static Node ReadNode(ReadOnlySpan<byte> node)
    {
        var inputs = new List<string>();
        var outputs = new List<string>();
        string name = "", op = "";
        var reader = new ProtobufReader(node);
        while (reader.Next(out int field, out int wire))
        {
            switch (field, wire)
            {
                case (1, 2): inputs.Add(reader.String()); break;
                case (2, 2): outputs.Add(reader.String()); break;
                case (3, 2): name = reader.String(); break;
                case (4, 2): op = reader.String(); break;
                default: reader.Skip(wire); break;
            }
        }
        return new Node(op, name, inputs, outputs);
    }

    private static string ReadValueInfoName(ReadOnlySpan<byte> valueInfo)
    {
        var reader = new ProtobufReader(valueInfo);
        while (reader.Next(out int field, out int wire))
        {
            if (field == 1 && wire == 2) return reader.String();
            reader.Skip(wire);
        }
        return "";
    }

    /// <summary>A float32 initializer (raw_data or float_data); other element types are skipped (null).</summary>
    private static Initializer? ReadTensor(ReadOnlySpan<byte> tensor)
    {
        var dims = new List<long>();
        int dataType = 0;
        string name = "";
        ReadOnlySpan<byte> raw = default;
        var floats = new List<float>();
        bool hasRaw = false;
        var reader = new ProtobufReader(tensor);
        while (reader.Next(out int field, out int wire))
        {
            switch (field, wire)
            {
                case (1, 0): dims.Add((long)reader.Varint()); break;
                case (1, 2): { var packed = new ProtobufReader(reader.Bytes()); while (!packed.End) dims.Add((long)packed.Varint()); break; }
                case (2, 0): dataType = (int)reader.Varint(); break;
                case (4, 2): { var bytes = reader.Bytes(); for (int i = 0; i + 4 <= bytes.Length; i += 4) floats.Add(BitConverter.ToSingle(bytes[i..(i + 4)])); break; }
                case (4, 5): floats.Add(reader.Fixed32Float()); break;
                case (8, 2): name = reader.String(); break;
                case (9, 2): raw = reader.Bytes(); hasRaw = true; break;
                case (13, 2): throw new InvalidDataException($"initializer '{name}' keeps its data in an external file, which is not read");
                default: reader.Skip(wire); break;
            }
        }
        if (dataType != 1) return null;   // FLOAT only
        long count = dims.Aggregate(1L, (a, b) => a * b);
        float[] values;
        if (hasRaw)
        {
            if (raw.Length != count * 4) throw new InvalidDataException($"initializer '{name}' has {raw.Length} bytes for {count} floats");
            values = new float[count];
            raw.CopyTo(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()));
            if (!BitConverter.IsLittleEndian) throw new NotSupportedException("ONNX raw data is little-endian; this machine is not.");
        }
        else
        {
            if (floats.Count != count) throw new InvalidDataException($"initializer '{name}' has {floats.Count} floats for shape [{string.Join(", ", dims)}]");
            values = [.. floats];
        }
        return new Initializer(name, [.. dims], values);
    }
}
