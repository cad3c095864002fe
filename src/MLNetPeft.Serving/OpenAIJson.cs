using System.Text.Json;

namespace MLNetPeft.Serving;

/// <summary>Reading OpenAI request bodies field by field, so that a wrong field is named in the error.</summary>
internal static class OpenAIJson
{
    public static async Task<JsonElement> ReadBodyAsync(Stream body, CancellationToken cancellationToken)
    {
        try
        {
            using var document = await JsonDocument.ParseAsync(body, new JsonDocumentOptions { MaxDepth = 32 }, cancellationToken).ConfigureAwait(false);
            if (document.RootElement.ValueKind != JsonValueKind.Object) throw OpenAIRequestException.Invalid("The request body must be a JSON object.");
            return document.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw OpenAIRequestException.Invalid($"The request body is not valid JSON: {e.Message}");
        }
    }

    public static bool Has(this JsonElement body, string name) =>
        body.TryGetProperty(name, out var value) && value.ValueKind != JsonValueKind.Null;

    public static string RequiredString(this JsonElement body, string name) =>
        body.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String && value.GetString() is { Length: > 0 } text
            ? text
            : throw OpenAIRequestException.Invalid($"'{name}' is required and must be a non-empty string.", name);

    public static string? OptionalString(this JsonElement body, string name) => !body.Has(name) ? null
        : body.GetProperty(name).ValueKind == JsonValueKind.String ? body.GetProperty(name).GetString()
        : throw OpenAIRequestException.Invalid($"'{name}' must be a string.", name);

    public static bool OptionalBool(this JsonElement body, string name) => body.Has(name) && body.GetProperty(name).ValueKind switch
    {
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => throw OpenAIRequestException.Invalid($"'{name}' must be true or false.", name),
    };

    public static int? OptionalInt(this JsonElement body, string name) => !body.Has(name) ? null
        : body.GetProperty(name).TryGetInt32(out int value) ? value
        : throw OpenAIRequestException.Invalid($"'{name}' must be an integer.", name);

    public static long? OptionalLong(this JsonElement body, string name) => !body.Has(name) ? null
        : body.GetProperty(name).TryGetInt64(out long value) ? value
        : throw OpenAIRequestException.Invalid($"'{name}' must be an integer.", name);

    public static float? OptionalNumber(this JsonElement body, string name) => !body.Has(name) ? null
        : body.GetProperty(name).ValueKind == JsonValueKind.Number ? body.GetProperty(name).GetSingle()
        : throw OpenAIRequestException.Invalid($"'{name}' must be a number.", name);

    /// <summary>A string or an array of strings (OpenAI's <c>stop</c> and <c>input</c>).</summary>
    public static IReadOnlyList<string>? OptionalStrings(this JsonElement body, string name)
    {
        if (!body.Has(name)) return null;
        var value = body.GetProperty(name);
        if (value.ValueKind == JsonValueKind.String) return [value.GetString()!];
        if (value.ValueKind == JsonValueKind.Array && value.EnumerateArray().All(e => e.ValueKind == JsonValueKind.String))
            return value.EnumerateArray().Select(e => e.GetString()!).ToList();
        throw OpenAIRequestException.Invalid($"'{name}' must be a string or an array of strings.", name);
    }
}
