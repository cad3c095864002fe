using System.IO.Compression;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.VectorData;
using Microsoft.ML;
using MLNetPeft.ML.Retrieval;
using MLNetPeft.Retrieval.Retrievers;
using MLNetPeft.Retrieval.Tests;
using static MLNetPeft.ML.Tests.RetrievalTests;

namespace MLNetPeft.ML.Tests;

/// <summary>
/// The retrieval stage's knowledge base kept outside the zip: a file referred to by path and SHA-256, and a pgvector
/// table on a database named by its connection string's name (the tests' throwaway server).
/// </summary>
public sealed class KnowledgeBaseStorageTests(PostgresServer server) : IClassFixture<PostgresServer>, IDisposable
{
    private readonly string _scratch = Directory.CreateTempSubdirectory("mlnetpeft-kb-storage-").FullName;

    public void Dispose() => Directory.Delete(_scratch, recursive: true);

    private static readonly FreshProcess.Row[] Rows = Questions.Select(q => new FreshProcess.Row(q.Text, "")).ToArray();
    private static readonly string[] Outputs = ["PassageIds", "Passages", "PassageScores"];

    private static RetrievalOptions Options(RetrievalMode mode) => new() { QueryColumnName = "Text", Top = 2, Mode = mode };

    [Fact]
    public void AReferencedFileIsCheckedBySha256AtLoad()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows);
        var kbPath = Path.Combine(_scratch, "kb.safetensors");
        var options = Options(RetrievalMode.Hybrid);
        options.Storage = KnowledgeBaseStorage.File;
        options.KnowledgeBasePath = kbPath;
        using var retrieval = ml.Retrieval().Retrieve(ml.Data.LoadFromEnumerable(Corpus), options).Fit(data);
        Assert.True(File.Exists(kbPath));
        var zip = Path.Combine(_scratch, "retrieval.zip");
        ml.Model.Save(retrieval, data.Schema, zip);
        using (var archive = ZipFile.OpenRead(zip))
            Assert.DoesNotContain(archive.Entries, e => e.FullName.Contains("KnowledgeBase.", StringComparison.Ordinal));

        var expected = FreshProcess.Columns(retrieval.Transform(data), Outputs);
        var loaded = (RetrievalTransformer)ml.Model.Load(zip, out _);
        using (loaded)
        {
            Assert.Equal(KnowledgeBaseStorage.File, loaded.Storage);
            Assert.Equal(expected, FreshProcess.Columns(loaded.Transform(data), Outputs));
        }

        File.AppendAllText(kbPath, " ");
        var changed = ExceptionChain.Find<InvalidDataException>(() => ml.Model.Load(zip, out _));
        Assert.Contains(kbPath, changed.Message);
        Assert.Contains("SHA-256", changed.Message);
        File.Delete(kbPath);
        Assert.Contains(kbPath, ExceptionChain.Find<FileNotFoundException>(() => ml.Model.Load(zip, out _)).Message);
        Assert.Equal("KnowledgeBasePath", Assert.Throws<ArgumentException>(() =>
            ml.Retrieval().Retrieve(ml.Data.LoadFromEnumerable(Corpus), new RetrievalOptions { Storage = KnowledgeBaseStorage.File })).ParamName);
    }

    [SkippableTheory]
    [InlineData(RetrievalMode.Dense)]
    [InlineData(RetrievalMode.Hybrid)]
    public async Task APgvectorKnowledgeBaseIsFoundByConnectionStringNameInAFreshProcess(RetrievalMode mode)
    {
        Skip.If(server.Unavailable is not null, server.Unavailable);
        // The throwaway server trusts local connections, so the password is never checked; it must not reach the zip.
        const string password = "s3cret-pw-in-config";
        var connectionString = server.NewDatabase() + $";Password={password}";
        var name = $"kb_{Guid.NewGuid():N}";
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows);
        var options = Options(mode);
        options.Storage = KnowledgeBaseStorage.PgVector;
        options.ConnectionStringName = name;
        options.CollectionName = "facts";
        options.Configuration = new ConfigurationBuilder().AddInMemoryCollection([new($"ConnectionStrings:{name}", connectionString)]).Build();
        var zip = Path.Combine(_scratch, "retrieval.zip");
        IReadOnlyList<string> expected, ids;
        using (var retrieval = ml.Retrieval().Retrieve(ml.Data.LoadFromEnumerable(Corpus), options).Fit(data))
        {
            Assert.IsType<MLNetPeft.Retrieval.VectorStores.PgVector.PgVectorCollection<string, KnowledgeBase.StoredPassage>>(retrieval.KnowledgeBase.Collection);
            expected = FreshProcess.Columns(retrieval.Transform(data), Outputs);
            ids = FreshProcess.Columns(retrieval.Transform(data), ["PassageIds"]);
            ml.Model.Save(retrieval, data.Schema, zip);
        }
        // The passages are those of the in-memory store (pgvector's HNSW is exact on four documents).
        using (var inMemory = ml.Retrieval().Retrieve(ml.Data.LoadFromEnumerable(Corpus), Options(mode)).Fit(data))
            Assert.Equal(FreshProcess.Columns(inMemory.Transform(data), ["PassageIds"]), ids);
        using (var archive = ZipFile.OpenRead(zip))
        {
            var text = string.Concat(archive.Entries.Select(e => { using var r = new StreamReader(e.Open(), System.Text.Encoding.Latin1); return r.ReadToEnd(); }));
            Assert.DoesNotContain(password, text);
            Assert.DoesNotContain("Host=", text);
            Assert.Contains(name, text);
        }

        // Another process finds the database through its own configuration: here the environment variable a .NET host reads.
        Environment.SetEnvironmentVariable($"ConnectionStrings__{name}", connectionString);
        try
        {
            Assert.Equal(expected, await FreshProcess.RunAsync(zip, Rows, Outputs, _scratch));
        }
        finally
        {
            Environment.SetEnvironmentVariable($"ConnectionStrings__{name}", null);
        }
        // Without it, loading names the missing setting.
        var missing = ExceptionChain.Find<InvalidOperationException>(() => ml.Model.Load(zip, out _));
        Assert.Contains($"ConnectionStrings:{name}", missing.Message);
    }

    [SkippableFact]
    public void AnUnreachableDatabaseIsNamedAtFitWithoutItsPassword()
    {
        Skip.If(server.Unavailable is not null, server.Unavailable);
        var ml = new MLContext(seed: 1);
        var options = Options(RetrievalMode.Dense);
        options.Storage = KnowledgeBaseStorage.PgVector;
        options.ConnectionStringName = "rag";
        options.Configuration = new ConfigurationBuilder().AddInMemoryCollection(
            [new("ConnectionStrings:rag", "Host=127.0.0.1;Port=1;Username=app;Password=s3cret-pw;Database=kb;Timeout=3")]).Build();
        var e = Assert.Throws<VectorStoreException>(() => ml.Retrieval().Retrieve(ml.Data.LoadFromEnumerable(Corpus), options).Fit(ml.Data.LoadFromEnumerable(Rows)));
        Assert.Contains("127.0.0.1:1", e.Message);
        Assert.DoesNotContain("s3cret-pw", e.Message);
        Assert.Equal("CollectionName", Assert.Throws<ArgumentException>(() => ml.Retrieval().Retrieve(ml.Data.LoadFromEnumerable(Corpus),
            new RetrievalOptions { Storage = KnowledgeBaseStorage.PgVector, ConnectionStringName = "rag", CollectionName = "no spaces" })).ParamName);
        options.ConnectionStringName = "absent";
        Assert.Contains("ConnectionStrings:absent", Assert.Throws<InvalidOperationException>(() =>
            ml.Retrieval().Retrieve(ml.Data.LoadFromEnumerable(Corpus), options).Fit(ml.Data.LoadFromEnumerable(Rows))).Message);
    }
}
