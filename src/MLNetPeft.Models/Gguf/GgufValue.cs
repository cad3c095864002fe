using System.Globalization;

namespace MLNetPeft.Gguf;

/// <summary>
/// One GGUF metadata value: a scalar (<see cref="Value"/> holds the .NET value of <see cref="Type"/>: byte, sbyte, ushort,
/// short, uint, int, float, bool, string, ulong, long, double) or an array of scalars (<see cref="Value"/> is a .NET array
/// of <see cref="ElementType"/>'s values).
/// </summary>
public sealed record GgufValue(GgufValueType Type, object Value, GgufValueType? ElementType = null)
{
    public static GgufValue Of(string value) => new(GgufValueType.String, value);
    public static GgufValue Of(uint value) => new(GgufValueType.UInt32, value);
    public static GgufValue Of(int value) => new(GgufValueType.Int32, value);
    public static GgufValue Of(float value) => new(GgufValueType.Float32, value);
    public static GgufValue Of(bool value) => new(GgufValueType.Bool, value);
    public static GgufValue Of(string[] values) => new(GgufValueType.Array, values, GgufValueType.String);
    public static GgufValue Of(int[] values) => new(GgufValueType.Array, values, GgufValueType.Int32);
    public static GgufValue Of(float[] values) => new(GgufValueType.Array, values, GgufValueType.Float32);

    /// <summary>The value as a string; throws naming <paramref name="key"/> when it is not one.</summary>
    public string AsString(string key) => Value as string ?? throw Wrong(key, "a string");

    /// <summary>Any integer scalar that fits a long.</summary>
    public long AsInteger(string key) => Value switch
    {
        byte v => v, sbyte v => v, ushort v => v, short v => v, uint v => v, int v => v, long v => v,
        ulong v when v <= long.MaxValue => (long)v,
        _ => throw Wrong(key, "an integer"),
    };

    /// <summary>A float scalar (float32 or float64) or an integer.</summary>
    public double AsNumber(string key) => Value switch
    {
        float f => f,
        double d => d,
        _ => AsInteger(key),
    };

    public bool AsBool(string key) => Value is bool b ? b : throw Wrong(key, "a bool");

    public string[] AsStringArray(string key) => Value as string[] ?? throw Wrong(key, "an array of strings");

    /// <summary>An array of any integer type, as ints (values outside int's range are an error).</summary>
    public int[] AsInt32Array(string key) => Value switch
    {
        int[] a => a,
        uint[] a when a.All(v => v <= int.MaxValue) => a.Select(v => (int)v).ToArray(),
        short[] a => a.Select(v => (int)v).ToArray(),
        ushort[] a => a.Select(v => (int)v).ToArray(),
        sbyte[] a => a.Select(v => (int)v).ToArray(),
        byte[] a => a.Select(v => (int)v).ToArray(),
        _ => throw Wrong(key, "an array of 32-bit integers"),
    };

    public float[] AsFloatArray(string key) => Value switch
    {
        float[] a => a,
        double[] a => a.Select(v => (float)v).ToArray(),
        _ => throw Wrong(key, "an array of floats"),
    };

    public override string ToString() => Value switch
    {
        string s => s.Length > 60 ? $"\"{s[..60]}…\"" : $"\"{s}\"",
        Array a => $"[{a.Length} × {ElementType}]",
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        var v => v.ToString() ?? "",
    };

    private InvalidDataException Wrong(string key, string expected) =>
        new($"GGUF metadata '{key}' is {(Type == GgufValueType.Array ? $"an array of {ElementType}" : Type.ToString())}, expected {expected}.");
}
