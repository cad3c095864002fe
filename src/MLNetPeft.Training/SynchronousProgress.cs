namespace MLNetPeft.Training;

/// <summary>
/// An <see cref="IProgress{T}"/> that reports on the calling thread, in order. <see cref="Progress{T}"/> posts each
/// report to the thread pool instead, so reports can arrive out of step order or after the fit has returned.
/// </summary>
public sealed class SynchronousProgress<T>(Action<T> report) : IProgress<T>
{
    private readonly Action<T> _report = report ?? throw new ArgumentNullException(nameof(report));

    public void Report(T value) => _report(value);
}

public static class SynchronousProgress
{
    public static SynchronousProgress<T> Create<T>(Action<T> report) => new(report);
}
