using System.Buffers.Binary;
using System.Text;

namespace MLNetPeft.Checkpoints.TorchPickle;

/// <summary>A global a pickle names (module and attribute), as opcode GLOBAL or STACK_GLOBAL gives it.</summary>
internal sealed record PickleGlobal(string Module, string Name)
{
    public override string ToString() => $"{Module}.{Name}";
}

/// <summary>A storage a tensor points into: PyTorch's persistent id ('storage', type, key, location, element count).</summary>
internal sealed record StorageReference(string StorageType, string Key, string Location, long ElementCount);

/// <summary>What <c>torch._utils._rebuild_tensor_v2</c> (or <c>_rebuild_parameter</c>) would build: a view into a storage.</summary>
internal sealed record TensorReference(StorageReference Storage, long Offset, long[] Shape, long[] Stride);

/// <summary>A dict as a pickle builds it, in insertion order (state dicts are OrderedDicts).</summary>
internal sealed class PickleDict
{
    public List<KeyValuePair<object?, object?>> Items { get; } = [];
}

/// <summary>
/// Interprets a pickle the way <c>torch.load(weights_only=True)</c> does, without executing anything: the only
/// callables are the tensor-rebuilding functions, storage types and <c>collections.OrderedDict</c>; any other global
/// (<c>os.system</c>, <c>builtins.eval</c>, a model class …) is refused with an <see cref="InvalidDataException"/> that
/// names it. Values become plain objects (strings, numbers, lists, tuples as arrays, <see cref="PickleDict"/>,
/// <see cref="TensorReference"/>). Every length is checked against the bytes that remain before anything is allocated,
/// and the memo, the stack and the nesting are bounded by the pickle's own size.
/// </summary>
internal sealed class RestrictedUnpickler
{
    /// <summary>Storage classes torch.save writes into persistent ids, with their element sizes.</summary>
    internal static readonly IReadOnlyDictionary<string, (TorchSharp.torch.ScalarType DType, int Size)> StorageTypes =
        new Dictionary<string, (TorchSharp.torch.ScalarType, int)>(StringComparer.Ordinal)
        {
            ["FloatStorage"] = (TorchSharp.torch.ScalarType.Float32, 4),
            ["DoubleStorage"] = (TorchSharp.torch.ScalarType.Float64, 8),
            ["HalfStorage"] = (TorchSharp.torch.ScalarType.Float16, 2),
            ["BFloat16Storage"] = (TorchSharp.torch.ScalarType.BFloat16, 2),
            ["LongStorage"] = (TorchSharp.torch.ScalarType.Int64, 8),
            ["IntStorage"] = (TorchSharp.torch.ScalarType.Int32, 4),
            ["ShortStorage"] = (TorchSharp.torch.ScalarType.Int16, 2),
            ["CharStorage"] = (TorchSharp.torch.ScalarType.Int8, 1),
            ["ByteStorage"] = (TorchSharp.torch.ScalarType.Byte, 1),
            ["BoolStorage"] = (TorchSharp.torch.ScalarType.Bool, 1),
        };

    private static readonly HashSet<string> Callables = new(StringComparer.Ordinal)
    {
        "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor", "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state", "_codecs.encode", "torch.Size",
    };

    private const int MaxDepth = 64;

    private readonly byte[] _data;
    private readonly string _source;
    private readonly List<object?> _stack = [];
    private readonly Stack<int> _marks = new();
    private readonly Dictionary<long, object?> _memo = [];
    private int _position;

    private RestrictedUnpickler(byte[] data, string source)
    {
        _data = data;
        _source = source;
    }

    /// <summary>Runs the pickle in <paramref name="data"/> to its STOP opcode and returns the value it built.</summary>
    public static object? Load(byte[] data, string source) => new RestrictedUnpickler(data, source).Run();

    private InvalidDataException Bad(string reason) => new($"'{_source}': {reason} (pickle offset {_position}).");

    private object? Run()
    {
        while (true)
        {
            if (_position >= _data.Length) throw Bad("the pickle ends without a STOP opcode");
            byte op = _data[_position++];
            switch (op)
            {
                case 0x80: // PROTO
                    byte protocol = ReadByte();
                    if (protocol > 5) throw Bad($"pickle protocol {protocol} is not one PyTorch writes");
                    break;
                case 0x95: // FRAME: a length hint, nothing to do
                    ReadBytes(8);
                    break;
                case (byte)'.': // STOP
                    if (_stack.Count != 1 || _marks.Count != 0) throw Bad("the pickle stops with an unbalanced stack");
                    return _stack[0];
                case (byte)'(': // MARK
                    if (_marks.Count >= MaxDepth) throw Bad($"more than {MaxDepth} nested marks");
                    _marks.Push(_stack.Count);
                    break;
                case (byte)'N': Push(null); break;
                case 0x88: Push(true); break;
                case 0x89: Push(false); break;
                case (byte)'J': Push((long)BinaryPrimitives.ReadInt32LittleEndian(ReadBytes(4))); break;
                case (byte)'K': Push((long)ReadByte()); break;
                case (byte)'M': Push((long)BinaryPrimitives.ReadUInt16LittleEndian(ReadBytes(2))); break;
                case 0x8a: Push(ReadLong(ReadByte())); break; // LONG1
                case 0x8b: Push(ReadLong(CheckedLength(BinaryPrimitives.ReadInt32LittleEndian(ReadBytes(4))))); break; // LONG4
                case (byte)'G': Push(BinaryPrimitives.ReadDoubleBigEndian(ReadBytes(8))); break; // BINFLOAT
                case (byte)'X': Push(ReadUtf8(CheckedLength(BinaryPrimitives.ReadUInt32LittleEndian(ReadBytes(4))))); break; // BINUNICODE
                case 0x8c: Push(ReadUtf8(ReadByte())); break; // SHORT_BINUNICODE
                case 0x8d: Push(ReadUtf8(CheckedLength(BinaryPrimitives.ReadUInt64LittleEndian(ReadBytes(8))))); break; // BINUNICODE8
                case (byte)'U': Push(Encoding.Latin1.GetString(ReadBytes(ReadByte()))); break; // SHORT_BINSTRING
                case (byte)'T': Push(Encoding.Latin1.GetString(ReadBytes(CheckedLength(BinaryPrimitives.ReadInt32LittleEndian(ReadBytes(4)))))); break; // BINSTRING
                case (byte)'C': Push(ReadBytes(ReadByte()).ToArray()); break; // SHORT_BINBYTES
                case (byte)'B': Push(ReadBytes(CheckedLength(BinaryPrimitives.ReadUInt32LittleEndian(ReadBytes(4)))).ToArray()); break; // BINBYTES
                case 0x8e: Push(ReadBytes(CheckedLength(BinaryPrimitives.ReadUInt64LittleEndian(ReadBytes(8)))).ToArray()); break; // BINBYTES8
                case (byte)'}': Push(new PickleDict()); break; // EMPTY_DICT
                case (byte)']': Push(new List<object?>()); break; // EMPTY_LIST
                case (byte)')': Push(Array.Empty<object?>()); break; // EMPTY_TUPLE
                case (byte)'t': Push(PopToMark().ToArray()); break; // TUPLE
                case 0x85: Push(new[] { Pop() }); break; // TUPLE1
                case 0x86: { var b = Pop(); var a = Pop(); Push(new[] { a, b }); break; } // TUPLE2
                case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); Push(new[] { a, b, c }); break; } // TUPLE3
                case (byte)'l': Push(PopToMark()); break; // LIST
                case (byte)'d': Push(ToDict(PopToMark())); break; // DICT
                case (byte)'a': { var item = Pop(); AsList(Peek()).Add(item); break; } // APPEND
                case (byte)'e': { var items = PopToMark(); AsList(Peek()).AddRange(items); break; } // APPENDS
                case (byte)'s': { var value = Pop(); var key = Pop(); AsDict(Peek()).Items.Add(new(key, value)); break; } // SETITEM
                case (byte)'u': { var items = PopToMark(); AsDict(Peek()).Items.AddRange(ToDict(items).Items); break; } // SETITEMS
                case (byte)'q': Memoize(ReadByte()); break; // BINPUT
                case (byte)'r': Memoize(BinaryPrimitives.ReadUInt32LittleEndian(ReadBytes(4))); break; // LONG_BINPUT
                case 0x94: Memoize(_memo.Count); break; // MEMOIZE
                case (byte)'h': Push(Recall(ReadByte())); break; // BINGET
                case (byte)'j': Push(Recall(BinaryPrimitives.ReadUInt32LittleEndian(ReadBytes(4)))); break; // LONG_BINGET
                case (byte)'c': Push(Allowed(new PickleGlobal(ReadLine(), ReadLine()))); break; // GLOBAL
                case 0x93: { var name = Pop() as string; var module = Pop() as string; // STACK_GLOBAL
                    if (module is null || name is null) throw Bad("STACK_GLOBAL needs a module and a name");
                    Push(Allowed(new PickleGlobal(module, name))); break; }
                case (byte)'Q': Push(PersistentLoad(Pop())); break; // BINPERSID
                case (byte)'R': { var args = Pop(); var callable = Pop(); Push(Call(callable, args)); break; } // REDUCE
                case (byte)'b': { var state = Pop(); Build(Peek(), state); break; } // BUILD
                case (byte)'0': Pop(); break; // POP
                case (byte)'2': Push(Peek()); break; // DUP
                default:
                    throw Bad($"opcode 0x{op:x2} is not one a weights-only PyTorch file uses; the file is corrupt or holds code");
            }
        }
    }

    private void Push(object? value)
    {
        // Every push consumes at least one byte of the pickle, so the stack is bounded by its size.
        _stack.Add(value);
    }

    private object? Pop()
    {
        int floor = _marks.Count > 0 ? _marks.Peek() : 0;
        if (_stack.Count <= floor) throw Bad("an opcode pops from an empty stack");
        var value = _stack[^1];
        _stack.RemoveAt(_stack.Count - 1);
        return value;
    }

    private object? Peek()
    {
        int floor = _marks.Count > 0 ? _marks.Peek() : 0;
        if (_stack.Count <= floor) throw Bad("an opcode reads an empty stack");
        return _stack[^1];
    }

    private List<object?> PopToMark()
    {
        if (_marks.Count == 0) throw Bad("an opcode needs a MARK that was never set");
        int mark = _marks.Pop();
        var items = _stack.GetRange(mark, _stack.Count - mark);
        _stack.RemoveRange(mark, _stack.Count - mark);
        return items;
    }

    private List<object?> AsList(object? value) => value as List<object?> ?? throw Bad("APPEND to something that is not a list");

    private PickleDict AsDict(object? value) => value as PickleDict ?? throw Bad("SETITEM on something that is not a dict");

    private PickleDict ToDict(List<object?> items)
    {
        if (items.Count % 2 != 0) throw Bad("a dict needs key/value pairs");
        var dict = new PickleDict();
        for (int i = 0; i < items.Count; i += 2) dict.Items.Add(new(items[i], items[i + 1]));
        return dict;
    }

    private void Memoize(long index)
    {
        if (_stack.Count == 0) throw Bad("a memo put with an empty stack");
        _memo[index] = _stack[^1];
    }

    private object? Recall(long index) => _memo.TryGetValue(index, out var value) ? value : throw Bad($"memo entry {index} was never put");

    private byte ReadByte()
    {
        if (_position >= _data.Length) throw Bad("the pickle ends inside an opcode");
        return _data[_position++];
    }

    private ReadOnlySpan<byte> ReadBytes(int count)
    {
        if (count < 0 || count > _data.Length - _position) throw Bad($"an opcode needs {count} bytes but {_data.Length - _position} remain");
        var span = new ReadOnlySpan<byte>(_data, _position, count);
        _position += count;
        return span;
    }

    /// <summary>A length read from the pickle, accepted only when that many bytes remain.</summary>
    private int CheckedLength(ulong length) => CheckedLength(length > long.MaxValue ? -1 : (long)length);

    private int CheckedLength(long length)
    {
        if (length < 0 || length > _data.Length - _position) throw Bad($"a length of {length} exceeds the {_data.Length - _position} bytes that remain");
        return (int)length;
    }

    private string ReadUtf8(int length)
    {
        try { return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(ReadBytes(length)); }
        catch (DecoderFallbackException) { throw Bad("a string is not valid UTF-8"); }
    }

    private string ReadLine()
    {
        int end = Array.IndexOf(_data, (byte)'\n', _position);
        if (end < 0 || end - _position > 256) throw Bad("a GLOBAL name is not a short line");
        var text = Encoding.ASCII.GetString(_data, _position, end - _position);
        _position = end + 1;
        return text;
    }

    private long ReadLong(int length)
    {
        var bytes = ReadBytes(length);
        if (length == 0) return 0;
        if (length > 8) throw Bad($"an integer of {length} bytes does not fit in 64 bits");
        long value = 0;
        for (int i = length - 1; i >= 0; i--) value = (value << 8) | bytes[i];
        if (length < 8 && (bytes[length - 1] & 0x80) != 0) value -= 1L << (8 * length);   // two's complement sign
        return value;
    }

    private PickleGlobal Allowed(PickleGlobal global)
    {
        var name = global.ToString();
        bool storage = global.Module == "torch" && StorageTypes.ContainsKey(global.Name);
        if (!storage && !Callables.Contains(name))
            throw new InvalidDataException($"'{_source}' refers to the global '{name}', which a weights-only reader refuses (only tensors, " +
                "storages and OrderedDict are allowed); the file may run code when unpickled by Python. Nothing was executed.");
        return global;
    }

    private StorageReference PersistentLoad(object? pid)
    {
        if (pid is not object?[] { Length: 5 } t || t[0] is not "storage" || t[1] is not PickleGlobal { Module: "torch" } type ||
            !StorageTypes.ContainsKey(type.Name) || t[2] is not string key || t[3] is not string location || t[4] is not long count)
            throw Bad("a persistent id is not PyTorch's ('storage', type, key, location, size)");
        if (count < 0) throw Bad($"storage '{key}' has a negative size {count}");
        return new StorageReference(type.Name, key, location, count);
    }

    private object? Call(object? callable, object? args)
    {
        if (callable is not PickleGlobal global) throw Bad("REDUCE calls something that is not a global");
        if (args is not object?[] a) throw Bad($"REDUCE of {global} without an argument tuple");
        switch (global.ToString())
        {
            case "collections.OrderedDict":
                if (a.Length != 0) throw Bad("OrderedDict is rebuilt with arguments");
                return new PickleDict();
            case "torch._utils._rebuild_tensor_v2":
            case "torch._utils._rebuild_tensor":
                if (a.Length < 4 || a[0] is not StorageReference storage || a[1] is not long offset)
                    throw Bad($"{global.Name} needs (storage, offset, size, stride, …)");
                return new TensorReference(storage, offset, Longs(a[2], "size"), Longs(a[3], "stride"));
            case "torch._utils._rebuild_parameter":
            case "torch._utils._rebuild_parameter_with_state":
                return a.Length >= 1 && a[0] is TensorReference tensor ? tensor : throw Bad($"{global.Name} needs a tensor");
            case "torch.Size":
                return a.Length == 1 ? Longs(a[0], "torch.Size") : throw Bad("torch.Size takes one tuple");
            case "_codecs.encode":
                return a.Length >= 1 && a[0] is string text ? Encoding.Latin1.GetBytes(text) : throw Bad("_codecs.encode needs a string");
            default:
                throw Bad($"{global} cannot be called");
        }
    }

    private long[] Longs(object? value, string what)
    {
        if (value is long[] done) return done;
        if (value is not object?[] items || items.Length > 64) throw Bad($"a tensor's {what} is not a tuple of at most 64 integers");
        return items.Select(i => i is long l ? l : throw Bad($"a tensor's {what} holds a non-integer")).ToArray();
    }

    // BUILD sets attributes from a state; on an OrderedDict that is state_dict()'s _metadata, which carries no weights.
    private void Build(object? target, object? state)
    {
        if (target is not PickleDict) throw Bad("BUILD on something other than a dict");
        if (state is not (null or PickleDict or object?[])) throw Bad("BUILD with a state that is not a dict");
    }
}
