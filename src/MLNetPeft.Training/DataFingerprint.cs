using System.Security.Cryptography;

namespace MLNetPeft.Training;

/// <summary>SHA-256 over training data (token sequences with their lengths, and numbers): what a checkpoint records of its data.</summary>
public sealed class DataFingerprint : IDisposable
{
    private readonly IncrementalHash _sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

    /// <summary>A sequence, length first, so that [1, 2][3] and [1][2, 3] differ.</summary>
    public DataFingerprint Add(IReadOnlyList<int> tokens)
    {
        _sha.AppendData(BitConverter.GetBytes(tokens.Count));
        foreach (var id in tokens) _sha.AppendData(BitConverter.GetBytes(id));
        return this;
    }

    public DataFingerprint Add(int value)
    {
        _sha.AppendData(BitConverter.GetBytes(value));
        return this;
    }

    public DataFingerprint Add(float value)
    {
        _sha.AppendData(BitConverter.GetBytes(value));
        return this;
    }

    /// <summary>The fingerprint of a list of token sequences (e.g. the prompts of an RL run).</summary>
    public static string Of(IEnumerable<IReadOnlyList<int>> sequences)
    {
        using var fingerprint = new DataFingerprint();
        foreach (var s in sequences) fingerprint.Add(s);
        return fingerprint.Finish();
    }

    /// <summary>The hash so far, lower-case hex.</summary>
    public string Finish() => Convert.ToHexStringLower(_sha.GetHashAndReset());

    public void Dispose() => _sha.Dispose();
}
