using System.Buffers.Binary;
using System.Text;

namespace MLNetPeft.Checkpoints;

/// <summary>
/// Reads one protobuf message's fields from its bytes (ONNX models, SentencePiece models): every varint, length and fixed
/// field is checked against the bytes that remain, so a damaged file gives <see cref="InvalidDataException"/>, never an
/// allocation it asks for or a read past the end. Callers add which file it was.
/// </summary>
internal ref struct ProtobufReader(ReadOnlySpan<byte> data)
{
    private readonly ReadOnlySpan<byte> _data = data;
    private int _position;

    public readonly bool End => _position >= _data.Length;

    /// <summary>The byte offset reached, for messages.</summary>
    public readonly int Position => _position;

    /// <summary>The next field's number and wire type; false at the end of the message.</summary>
    public bool Next(out int field, out int wire)
    {
        field = wire = 0;
        if (End) return false;
        ulong key = Varint();
        if (key >> 3 is 0 or > int.MaxValue) throw new InvalidDataException($"field number {key >> 3} at byte {_position}");
        field = (int)(key >> 3);
        wire = (int)(key & 7);
        return true;
    }

    public ulong Varint()
    {
        ulong result = 0;
        for (int shift = 0; shift < 70; shift += 7)
        {
            if (_position >= _data.Length) throw new InvalidDataException("a varint runs past the end of the data");
            byte b = _data[_position++];
            result |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return result;
        }
        throw new InvalidDataException("a varint is longer than 10 bytes");
    }

    public ReadOnlySpan<byte> Bytes()
    {
        ulong length = Varint();
        if (length > (ulong)(_data.Length - _position))
            throw new InvalidDataException($"a length of {length} runs past the end of the data ({_data.Length - _position} bytes left)");
        var slice = _data.Slice(_position, (int)length);
        _position += (int)length;
        return slice;
    }

    public string String()
    {
        var bytes = Bytes();
        try { return Strict.GetString(bytes); }
        catch (DecoderFallbackException) { throw new InvalidDataException($"a string that is not UTF-8 before byte {_position}"); }
    }

    public float Fixed32Float()
    {
        if (_data.Length - _position < 4) throw new InvalidDataException("a fixed32 runs past the end of the data");
        float value = BinaryPrimitives.ReadSingleLittleEndian(_data.Slice(_position, 4));
        _position += 4;
        return value;
    }

    public void Skip(int wire)
    {
        switch (wire)
        {
            case 0: Varint(); break;
            case 2: Bytes(); break;
            case 1 or 5:
                int size = wire == 1 ? 8 : 4;
                if (_data.Length - _position < size) throw new InvalidDataException("a fixed field runs past the end of the data");
                _position += size;
                break;
            default: throw new InvalidDataException($"unknown protobuf wire type {wire}");
        }
    }

    private static readonly UTF8Encoding Strict = new(false, throwOnInvalidBytes: true);
}
