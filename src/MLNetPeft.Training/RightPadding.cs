using static TorchSharp.torch;

namespace MLNetPeft.Training;

/// <summary>Variable-length rows of ids as one [rows, length] int64 batch, each row's values first, padding after.</summary>
internal static class RightPadding
{
    /// <summary>Each row's values (its first <paramref name="length"/>), then <paramref name="fill"/> up to <paramref name="length"/>.</summary>
    public static Tensor Values<TRow>(IReadOnlyList<TRow> rows, int length, long fill, Device device) where TRow : IReadOnlyList<int>
    {
        var values = new long[rows.Count * length];
        Array.Fill(values, fill);
        for (int b = 0; b < rows.Count; b++)
            for (int t = 0; t < Math.Min(rows[b].Count, length); t++) values[b * length + t] = rows[b][t];
        return tensor(values, [rows.Count, length]).to(device);
    }

    /// <summary>The attention mask of <see cref="Values"/>: 1 over each row's values, 0 over the padding.</summary>
    public static Tensor Mask<TRow>(IReadOnlyList<TRow> rows, int length, Device device) where TRow : IReadOnlyList<int>
    {
        var mask = new long[rows.Count * length];
        for (int b = 0; b < rows.Count; b++) Array.Fill(mask, 1L, b * length, Math.Min(rows[b].Count, length));
        return tensor(mask, [rows.Count, length]).to(device);
    }
}
