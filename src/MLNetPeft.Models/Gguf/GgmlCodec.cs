using System.Buffers.Binary;

namespace MLNetPeft.Gguf;

/// <summary>
/// Encodes and decodes tensor data in ggml's layouts. Q8_0 is ggml's reference quantiser (<c>quantize_row_q8_0_ref</c>,
/// which gguf-py's <c>quants.py</c> also follows): blocks of 32 values share the scale d = max|x| / 127, stored as
/// float16, and each value is round-half-away-from-zero(x / d) as int8.
/// </summary>
public static class GgmlCodec
{
    public const int Q8BlockElements = 32, Q8BlockBytes = 34;

    /// <summary>Quantises <paramref name="values"/> (a multiple of 32 long) into Q8_0 blocks.</summary>
    public static void QuantizeQ8_0(ReadOnlySpan<float> values, Span<byte> destination)
    {
        if (values.Length % Q8BlockElements != 0) throw new ArgumentException($"Q8_0 needs a multiple of {Q8BlockElements} values, got {values.Length}.", nameof(values));
        int blocks = values.Length / Q8BlockElements;
        if (destination.Length != blocks * Q8BlockBytes) throw new ArgumentException($"Q8_0 of {values.Length} values takes {blocks * Q8BlockBytes} bytes, the destination has {destination.Length}.", nameof(destination));
        for (int b = 0; b < blocks; b++)
        {
            var block = values.Slice(b * Q8BlockElements, Q8BlockElements);
            var output = destination.Slice(b * Q8BlockBytes, Q8BlockBytes);
            float amax = 0;
            foreach (var v in block) amax = MathF.Max(amax, MathF.Abs(v));
            float d = amax / 127f;
            float id = d != 0 ? 1f / d : 0f;
            BinaryPrimitives.WriteHalfLittleEndian(output, (Half)d);
            for (int j = 0; j < Q8BlockElements; j++)
                output[2 + j] = unchecked((byte)(sbyte)MathF.Round(block[j] * id, MidpointRounding.AwayFromZero));
        }
    }

    /// <summary>Expands Q8_0 blocks into floats: d · q.</summary>
    public static void DequantizeQ8_0(ReadOnlySpan<byte> source, Span<float> destination)
    {
        if (source.Length % Q8BlockBytes != 0 || destination.Length != source.Length / Q8BlockBytes * Q8BlockElements)
            throw new ArgumentException($"{source.Length} Q8_0 bytes do not make {destination.Length} values.");
        for (int b = 0; b < source.Length / Q8BlockBytes; b++)
        {
            var block = source.Slice(b * Q8BlockBytes, Q8BlockBytes);
            float d = (float)BinaryPrimitives.ReadHalfLittleEndian(block);
            var output = destination.Slice(b * Q8BlockElements, Q8BlockElements);
            for (int j = 0; j < Q8BlockElements; j++) output[j] = d * (sbyte)block[2 + j];
        }
    }

    /// <summary>Decodes float32, float16 or bfloat16 data into floats.</summary>
    public static void DecodeFloats(GgmlType type, ReadOnlySpan<byte> source, Span<float> destination)
    {
        switch (type)
        {
            case GgmlType.F32:
                for (int i = 0; i < destination.Length; i++) destination[i] = BinaryPrimitives.ReadSingleLittleEndian(source[(4 * i)..]);
                break;
            case GgmlType.F16:
                for (int i = 0; i < destination.Length; i++) destination[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(source[(2 * i)..]);
                break;
            case GgmlType.BF16:
                for (int i = 0; i < destination.Length; i++) destination[i] = BitConverter.Int32BitsToSingle(BinaryPrimitives.ReadUInt16LittleEndian(source[(2 * i)..]) << 16);
                break;
            case GgmlType.Q8_0:
                DequantizeQ8_0(source, destination);
                break;
            default:
                throw new NotSupportedException($"ggml type {type} cannot be decoded; supported: F32, F16, BF16, Q8_0.");
        }
    }
}
