using System.CommandLine;
using System.Reflection;
using Spectre.Console;

namespace MLNetPeft.Cli;

/// <summary>
/// The <c>mlnetpeft</c> command line: <c>train sft|dpo|reward|classify</c>, <c>generate</c>, <c>evaluate</c>,
/// <c>serve</c>, <c>convert</c>. A user error prints one line (<c>error: ...</c>) and exits with 1; a usage error is
/// System.CommandLine's message and exit code 1 as well.
/// </summary>
public static class CliApp
{
    public static async Task<int> RunAsync(string[] args, TextWriter? output = null, TextWriter? error = null, CancellationToken cancellationToken = default)
    {
        output ??= Console.Out;
        error ??= Console.Error;
        var console = output == Console.Out
            ? AnsiConsole.Console
            : AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(output), Interactive = InteractionSupport.No, Ansi = AnsiSupport.No });
        var root = new RootCommand("Fine-tune, evaluate, serve and convert language models with MLNetPeft (ML.NET + TorchSharp).");
        var context = new CommandContext(console, output);
        root.Subcommands.Add(TrainCommands.Create(context));
        root.Subcommands.Add(UseCommands.Generate(context));
        root.Subcommands.Add(UseCommands.Evaluate(context));
        root.Subcommands.Add(UseCommands.Serve(context));
        root.Subcommands.Add(UseCommands.Convert(context));
        var parsed = root.Parse(args);
        try
        {
            return await parsed.InvokeAsync(new InvocationConfiguration { Output = output, Error = error, EnableDefaultExceptionHandler = false }, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            await error.WriteLineAsync("stopped.").ConfigureAwait(false);
            return 130;
        }
        catch (Exception e)
        {
            await error.WriteLineAsync($"error: {Describe(e)}").ConfigureAwait(false);
            return 1;
        }
    }

    /// <summary>The innermost message: ML.NET wraps load errors (reflection, "error during class instantiation") around the one that says what is wrong.</summary>
    internal static string Describe(Exception e)
    {
        while (e.InnerException is { } inner) e = inner;
        return e.Message;
    }
}

/// <summary>What every command writes to.</summary>
internal sealed record CommandContext(IAnsiConsole Console, TextWriter Output);
