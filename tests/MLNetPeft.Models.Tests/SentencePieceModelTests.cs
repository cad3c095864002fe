using MLNetPeft.Tokenization;

namespace MLNetPeft.Models.Tests;

public class SentencePieceModelTests
{
    // Byte fallback needs all 256 byte pieces in a row (ids 3-258 here): Microsoft.ML.Tokenizers finds a byte's id by offset.
    private static SentencePieceModel Tiny() => new(
    [
        new("<unk>", 0, SentencePieceType.Unknown), new("<s>", 0, SentencePieceType.Control), new("</s>", 0, SentencePieceType.Control),
        .. Enumerable.Range(0, 256).Select(b => new SentencePiece($"<0x{b:X2}>", 0, SentencePieceType.Byte)),
        new("\u2581he", -1, SentencePieceType.Normal), new("llo", -2, SentencePieceType.Normal),
        new("\u2581hello", -3, SentencePieceType.Normal), new("ll", -4, SentencePieceType.Normal), new("lo", -5, SentencePieceType.Normal),
        new("\u2581", -6, SentencePieceType.Normal), new("h", -7, SentencePieceType.Normal), new("e", -8, SentencePieceType.Normal),
        new("l", -9, SentencePieceType.Normal), new("o", -10, SentencePieceType.Normal), new("\u2581h", -11, SentencePieceType.Normal),
    ], IsBpe: true, ByteFallback: true, AddDummyPrefix: true, RemoveExtraWhitespaces: false, EscapeWhitespaces: true,
        TreatWhitespaceAsSuffix: false, HasCharsMap: false, UnkId: 0, BosId: 1, EosId: 2, PadId: -1);

    [Fact]
    public void What_is_written_reads_back_and_Microsoft_ML_Tokenizers_cuts_with_it()
    {
        var model = Tiny();
        var bytes = model.ToBytes();
        var back = SentencePieceModel.Read(bytes, "tiny");
        Assert.Equal(model.Pieces, back.Pieces);
        Assert.Equal(model with { Pieces = back.Pieces }, back);

        using var dir = new TempFolder();
        File.WriteAllBytes(dir.File("tokenizer.model"), bytes);
        File.WriteAllText(dir.File("tokenizer_config.json"), """{ "add_bos_token": true, "bos_token": "<s>", "eos_token": "</s>" }""");
        var tokenizer = TextTokenizer.FromPretrained(dir.Path);
        // "▁hello▁A": the best-scored merge that exists each time (ll, llo, ▁h, ▁he, ▁hello), then "▁", and "A", which has
        // no piece, as its byte.
        Assert.Equal([1, 259 + 2, 259 + 5, 3 + 0x41], tokenizer.Encode("hello A"));
        Assert.Equal("hello A", tokenizer.Decode(tokenizer.Encode("hello A", addSpecialTokens: false)));
    }

    [Fact]
    public void Every_truncation_and_corruption_is_refused_as_invalid_data_or_read_as_a_shorter_model()
    {
        var bytes = Tiny().ToBytes();
        int refused = 0;
        void Check(byte[] data)
        {
            try { SentencePieceModel.Read(data, "corrupt"); }
            catch (InvalidDataException) { refused++; }
        }
        for (int length = 0; length < bytes.Length; length++) Check(bytes[..length]);
        var random = new Random(5);
        for (int i = 0; i < 400; i++)
        {
            var data = (byte[])bytes.Clone();
            for (int flips = random.Next(1, 4); flips > 0; flips--) data[random.Next(data.Length)] = (byte)random.Next(256);
            Check(data);
        }
        Assert.True(refused > bytes.Length / 2, $"only {refused} of {bytes.Length + 400} damaged files refused");
        // A length that claims far more than the file holds is refused before anything is allocated.
        var huge = new byte[] { 0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x07, 0x01 };
        Assert.Contains("length", Assert.Throws<InvalidDataException>(() => SentencePieceModel.Read(huge, "huge")).Message);
        Assert.Contains("no pieces", Assert.Throws<InvalidDataException>(() => SentencePieceModel.Read([], "empty")).Message);
    }
}
