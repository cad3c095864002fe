namespace MLNetPeft.Serving;

/// <summary>A request the server refuses, with the HTTP status and the fields of OpenAI's error body.</summary>
public sealed class OpenAIRequestException(int status, string message, string? param = null, string? code = null, string type = "invalid_request_error")
    : Exception(message)
{
    public int Status { get; } = status;
    public string Type { get; } = type;
    public string? Param { get; } = param;
    public string? Code { get; } = code;

    public static OpenAIRequestException Invalid(string message, string? param = null, string? code = null) => new(400, message, param, code);
}
