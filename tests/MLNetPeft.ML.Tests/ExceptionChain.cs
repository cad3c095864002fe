namespace MLNetPeft.ML.Tests;

/// <summary>ML.NET's model loader calls our Create by reflection, so load errors arrive wrapped; these look inside.</summary>
internal static class ExceptionChain
{
    public static IEnumerable<Exception> Flatten(Exception e)
    {
        for (var x = e; x is not null; x = x.InnerException) yield return x;
    }

    /// <summary>Runs <paramref name="action"/> and returns the <typeparamref name="T"/> it threw, possibly wrapped.</summary>
    public static T Find<T>(Action action) where T : Exception
    {
        var thrown = Assert.ThrowsAny<Exception>(action);
        return Flatten(thrown).OfType<T>().FirstOrDefault()
            ?? throw new Xunit.Sdk.XunitException($"Expected a {typeof(T).Name} in the chain, got: {string.Join(" | ", Flatten(thrown).Select(x => $"{x.GetType().Name}: {x.Message}"))}");
    }
}
