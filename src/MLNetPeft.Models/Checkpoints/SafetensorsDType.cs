using static TorchSharp.torch;

namespace MLNetPeft.Checkpoints;

/// <summary>The element types of the safetensors format, as spelled in its header.</summary>
public enum SafetensorsDType
{
    F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL,
}

/// <summary>Size and TorchSharp mapping of each <see cref="SafetensorsDType"/>.</summary>
public static class SafetensorsDTypes
{
    public static int SizeInBytes(this SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F64 or SafetensorsDType.I64 => 8,
        SafetensorsDType.F32 or SafetensorsDType.I32 => 4,
        SafetensorsDType.F16 or SafetensorsDType.BF16 or SafetensorsDType.I16 => 2,
        SafetensorsDType.I8 or SafetensorsDType.U8 or SafetensorsDType.BOOL => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    /// <summary>Parses a header dtype string; returns false for anything not listed in the format.</summary>
    public static bool TryParse(string text, out SafetensorsDType dtype)
    {
        // Enum.TryParse would also accept numbers and other casings; the format is exact.
        foreach (var value in Enum.GetValues<SafetensorsDType>())
        {
            if (string.Equals(value.ToString(), text, StringComparison.Ordinal)) { dtype = value; return true; }
        }
        dtype = default;
        return false;
    }

    public static ScalarType ToScalarType(this SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F64 => ScalarType.Float64,
        SafetensorsDType.F32 => ScalarType.Float32,
        SafetensorsDType.F16 => ScalarType.Float16,
        SafetensorsDType.BF16 => ScalarType.BFloat16,
        SafetensorsDType.I64 => ScalarType.Int64,
        SafetensorsDType.I32 => ScalarType.Int32,
        SafetensorsDType.I16 => ScalarType.Int16,
        SafetensorsDType.I8 => ScalarType.Int8,
        SafetensorsDType.U8 => ScalarType.Byte,
        SafetensorsDType.BOOL => ScalarType.Bool,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    public static SafetensorsDType FromScalarType(ScalarType type) => type switch
    {
        ScalarType.Float64 => SafetensorsDType.F64,
        ScalarType.Float32 => SafetensorsDType.F32,
        ScalarType.Float16 => SafetensorsDType.F16,
        ScalarType.BFloat16 => SafetensorsDType.BF16,
        ScalarType.Int64 => SafetensorsDType.I64,
        ScalarType.Int32 => SafetensorsDType.I32,
        ScalarType.Int16 => SafetensorsDType.I16,
        ScalarType.Int8 => SafetensorsDType.I8,
        ScalarType.Byte => SafetensorsDType.U8,
        ScalarType.Bool => SafetensorsDType.BOOL,
        _ => throw new NotSupportedException($"Tensor type {type} cannot be stored in safetensors."),
    };
}
