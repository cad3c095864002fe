using MLNetPeft.Cli;

// Ctrl+C stops a run at the next step boundary (a checkpoint is written when --checkpoints is set).
using var stop = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Cancel(); };
return await CliApp.RunAsync(args, cancellationToken: stop.Token);
