using Microsoft.Extensions.VectorData;
using Npgsql;

namespace MLNetPeft.Retrieval.VectorStores.PgVector;

/// <summary>SQL pieces shared by the pgvector store and its collections.</summary>
internal static class PgSql
{
    /// <summary>A quoted identifier ("name", inner quotes doubled).</summary>
    public static string Quote(string identifier) => "\"" + identifier.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"";

    /// <summary>pgvector's operator, operator class and the score VectorData expects, for a distance function.</summary>
    public static (string Operator, string OperatorClass, Func<double, double> Score, bool HigherIsBetter) Distance(string? function, string property) => (function ?? DistanceFunction.CosineSimilarity) switch
    {
        DistanceFunction.CosineSimilarity => ("<=>", "vector_cosine_ops", d => 1 - d, true),
        DistanceFunction.CosineDistance => ("<=>", "vector_cosine_ops", d => d, false),
        DistanceFunction.DotProductSimilarity => ("<#>", "vector_ip_ops", d => -d, true),   // <#> is the negative inner product
        DistanceFunction.EuclideanDistance => ("<->", "vector_l2_ops", d => d, false),
        var other => throw new NotSupportedException($"Distance function '{other}' of vector property '{property}'; pgvector supports {DistanceFunction.CosineSimilarity}, {DistanceFunction.CosineDistance}, {DistanceFunction.DotProductSimilarity} and {DistanceFunction.EuclideanDistance}."),
    };

    /// <summary>Where a data source connects, for messages: host, port, database and user, never the password.</summary>
    public static string Target(NpgsqlDataSource dataSource)
    {
        var b = new NpgsqlConnectionStringBuilder(dataSource.ConnectionString);
        return $"PostgreSQL at {b.Host}:{b.Port}, database '{b.Database ?? b.Username}', user '{b.Username}'";
    }

    /// <summary>An open connection, or a <see cref="VectorStoreException"/> that names the server (not the password) when it cannot be reached.</summary>
    public static async Task<NpgsqlConnection> OpenAsync(NpgsqlDataSource dataSource, CancellationToken cancellationToken)
    {
        try
        {
            return await dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is NpgsqlException or System.Net.Sockets.SocketException or TimeoutException)
        {
            throw new VectorStoreException($"Cannot connect to {Target(dataSource)}: {e.Message}", e);
        }
    }

    /// <summary>Checks a collection or schema name: letters, digits, '_' and '-', at most 63 characters (PostgreSQL's identifier limit).</summary>
    public static string CheckName(string name, string what)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name, what);
        if (name.Length > 63 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-'))
            throw new ArgumentException($"The {what} '{name}' must be 1–63 characters of letters, digits, '_' and '-'.", what);
        return name;
    }
}
