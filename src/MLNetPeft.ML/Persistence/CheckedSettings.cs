using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.ML;

namespace MLNetPeft.ML.Persistence;

/// <summary>
/// A transformer's settings (column names, options) as one JSON text followed by its SHA-256 in the model stream: a
/// damaged zip fails to load instead of loading with other settings and quietly behaving differently.
/// </summary>
internal static class CheckedSettings
{
    /// <summary>Settings longer than this are not a transformer's; the stream is corrupt.</summary>
    private const int MaxLength = 16 << 20;

    public static void Write<T>(ModelSaveContext ctx, T settings)
    {
        var json = JsonSerializer.Serialize(settings);
        ctx.Writer.Write(json);
        ctx.Writer.Write(Hash(json));
    }

    public static T Read<T>(ModelLoadContext ctx, string what) where T : class
    {
        string json, hash;
        try
        {
            json = ctx.Reader.ReadString();
            hash = ctx.Reader.ReadString();
        }
        catch (Exception e) when (e is EndOfStreamException or IOException or FormatException)
        {
            throw new InvalidDataException($"The model zip's {what} settings cannot be read: {e.Message}", e);
        }
        if (json.Length > MaxLength || hash != Hash(json))
            throw new InvalidDataException($"The model zip's {what} settings do not match their SHA-256: the zip is damaged.");
        try
        {
            return JsonSerializer.Deserialize<T>(json) ?? throw new InvalidDataException($"The model zip holds no {what} settings.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"The model zip's {what} settings are not valid: {e.Message}", e);
        }
    }

    private static string Hash(string json) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(json)));
}
