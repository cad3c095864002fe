namespace MLNetPeft.Gguf;

/// <summary>The type tags of GGUF metadata values (ggml's <c>gguf_type</c>).</summary>
public enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7,
    String = 8, Array = 9, UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>The tensor types of ggml (<c>ggml_type</c>); the ones this library reads and writes are F32, F16 and Q8_0.</summary>
public enum GgmlType : uint
{
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
    IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
    I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
}

/// <summary>The weight formats a GGUF file can be written in (llama.cpp's <c>general.file_type</c> values in brackets).</summary>
public enum GgufFileType
{
    /// <summary>Every tensor in float32 (ALL_F32 = 0).</summary>
    F32 = 0,
    /// <summary>Matrices in float16, vectors (norms, biases) in float32 (MOSTLY_F16 = 1).</summary>
    F16 = 1,
    /// <summary>Matrices in 8-bit blocks of 32 with a float16 scale, vectors in float32 (MOSTLY_Q8_0 = 7).</summary>
    Q8_0 = 7,
}

/// <summary>Block sizes of the ggml types: how many elements share one block, and its bytes.</summary>
public static class GgmlTypes
{
    /// <summary>(elements per block, bytes per block) of the types whose layout is known; null for the others.</summary>
    public static (int Elements, int Bytes)? Block(GgmlType type) => type switch
    {
        GgmlType.F32 or GgmlType.I32 => (1, 4),
        GgmlType.F16 or GgmlType.BF16 or GgmlType.I16 => (1, 2),
        GgmlType.I8 => (1, 1),
        GgmlType.F64 or GgmlType.I64 => (1, 8),
        GgmlType.Q4_0 => (32, 18),
        GgmlType.Q4_1 => (32, 20),
        GgmlType.Q5_0 => (32, 22),
        GgmlType.Q5_1 => (32, 24),
        GgmlType.Q8_0 => (32, 34),
        GgmlType.Q8_1 => (32, 36),
        GgmlType.Q2_K => (256, 84),
        GgmlType.Q3_K => (256, 110),
        GgmlType.Q4_K => (256, 144),
        GgmlType.Q5_K => (256, 176),
        GgmlType.Q6_K => (256, 210),
        GgmlType.Q8_K => (256, 292),
        GgmlType.IQ4_NL => (32, 18),
        GgmlType.IQ4_XS => (256, 136),
        _ => null,
    };

    /// <summary>Whether this library can turn tensors of <paramref name="type"/> into floats.</summary>
    public static bool CanDecode(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0;
}
