using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace MLNetPeft.Hosting.Models;

/// <summary>
/// Checks the registrations when the host starts (<c>ValidateOnStart</c>); every failure names the setting as it is
/// written in configuration (e.g. <c>MLNetPeft:Models:chat:Path</c>), so a bad appsettings.json is found before the
/// first request rather than by it.
/// </summary>
internal sealed class ModelRegistrationValidator(string sectionPath, IHostEnvironment? environment) : IValidateOptions<MLNetPeftHostingOptions>
{
    public ValidateOptionsResult Validate(string? name, MLNetPeftHostingOptions options)
    {
        var failures = new List<string>();
        if (options.Models is null) return ValidateOptionsResult.Fail($"{sectionPath}:Models must be a section of named models.");
        foreach (var (modelName, model) in options.Models)
        {
            string key = $"{sectionPath}:Models:{modelName}";
            if (model is null) { failures.Add($"{key} is empty: give at least its Path."); continue; }
            if (string.IsNullOrWhiteSpace(model.Path))
                failures.Add($"{key}:Path is required: the model zip saved with mlContext.Model.Save.");
            else if (!File.Exists(ResolvePath(model.Path, environment)))
                failures.Add($"{key}:Path: the file '{model.Path}' does not exist (looked for {ResolvePath(model.Path, environment)}).");
            if (model.MaxPooledEngines < 1)
                failures.Add($"{key}:MaxPooledEngines is {model.MaxPooledEngines}; it must be at least 1.");
        }
        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }

    /// <summary>A relative path is read from the content root, as ASP.NET Core reads appsettings.json and static files.</summary>
    internal static string ResolvePath(string path, IHostEnvironment? environment) =>
        System.IO.Path.GetFullPath(path, environment?.ContentRootPath ?? Directory.GetCurrentDirectory());
}
