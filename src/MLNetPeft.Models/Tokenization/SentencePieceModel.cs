using System.Buffers.Binary;
using System.Text;
using MLNetPeft.Checkpoints;

namespace MLNetPeft.Tokenization;

/// <summary>SentencePiece's piece types (<c>ModelProto.SentencePiece.Type</c>); llama.cpp's token types use the same numbers.</summary>
public enum SentencePieceType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }

/// <summary>One piece of a SentencePiece vocabulary: its text (▁ for a space), score and type; its id is its position.</summary>
public sealed record SentencePiece(string Piece, float Score, SentencePieceType Type);

/// <summary>
/// The parts of a SentencePiece <c>tokenizer.model</c> (the protobuf <c>ModelProto</c> of sentencepiece_model.proto) that
/// decide how text is cut: the pieces with scores and types, the algorithm, byte fallback and the normalizer's
/// whitespace rules. Read so that a model can be written to GGUF (llama.cpp's "llama" vocabulary), and written from a
/// GGUF file's vocabulary so that Microsoft.ML.Tokenizers' <c>LlamaTokenizer</c> builds the tokenizer back. Every length
/// and count is checked against the bytes that remain before anything is allocated; other fields are skipped.
/// </summary>
public sealed record SentencePieceModel(IReadOnlyList<SentencePiece> Pieces, bool IsBpe, bool ByteFallback, bool AddDummyPrefix,
    bool RemoveExtraWhitespaces, bool EscapeWhitespaces, bool TreatWhitespaceAsSuffix, bool HasCharsMap, int UnkId, int BosId, int EosId, int PadId)
{
    // Field numbers of sentencepiece_model.proto.
    private const int ModelPieces = 1, ModelTrainerSpec = 2, ModelNormalizerSpec = 3;
    private const int PieceText = 1, PieceScore = 2, PieceType = 3;
    private const int TrainerModelType = 3, TrainerWhitespaceAsSuffix = 24, TrainerByteFallback = 35,
        TrainerUnkId = 40, TrainerBosId = 41, TrainerEosId = 42, TrainerPadId = 43;
    private const int NormalizerName = 1, NormalizerCharsMap = 2, NormalizerAddDummyPrefix = 3, NormalizerRemoveExtraWhitespaces = 4, NormalizerEscapeWhitespaces = 5;
    private const int Bpe = 2, Unigram = 1;

    /// <summary>The most pieces a model may have (the largest real vocabularies have about 256 k).</summary>
    public const int MaxPieces = 4 << 20;

    /// <exception cref="InvalidDataException">The bytes are not a well-formed ModelProto (the message says where).</exception>
    public static SentencePieceModel Read(ReadOnlySpan<byte> data, string source)
    {
        try { return Parse(data); }
        catch (InvalidDataException e) { throw new InvalidDataException($"SentencePiece model '{source}' is malformed: {e.Message}.", e); }
    }

    private static SentencePieceModel Parse(ReadOnlySpan<byte> data)
    {
        var pieces = new List<SentencePiece>();
        // proto2 defaults, for the fields a file leaves out.
        int modelType = Unigram, unk = 0, bos = 1, eos = 2, pad = -1;
        bool byteFallback = false, suffix = false, addDummyPrefix = true, removeExtra = true, escape = true, charsMap = false;
        var reader = new ProtobufReader(data);
        while (reader.Next(out int field, out int wire))
        {
            if (field == ModelPieces && wire == 2)
            {
                if (pieces.Count >= MaxPieces) throw new InvalidDataException($"more than {MaxPieces:N0} pieces");
                var piece = new ProtobufReader(reader.Bytes());
                string? text = null; float score = 0; ulong type = (ulong)SentencePieceType.Normal;
                while (piece.Next(out int f, out int w))
                {
                    if (f == PieceText && w == 2) text = piece.String();
                    else if (f == PieceScore && w == 5) score = piece.Fixed32Float();
                    else if (f == PieceType && w == 0) type = piece.Varint();
                    else piece.Skip(w);
                }
                if (string.IsNullOrEmpty(text)) throw new InvalidDataException($"piece {pieces.Count} has no text");
                if (type is < 1 or > 6) throw new InvalidDataException($"piece {pieces.Count} ('{text}') has type {type}; types are 1-6");
                pieces.Add(new SentencePiece(text, score, (SentencePieceType)type));
            }
            else if (field == ModelTrainerSpec && wire == 2)
            {
                var spec = new ProtobufReader(reader.Bytes());
                while (spec.Next(out int f, out int w))
                {
                    if (w != 0) { spec.Skip(w); continue; }
                    // int32 fields: a negative id is a ten-byte varint whose low 32 bits are the value.
                    int v = unchecked((int)spec.Varint());
                    switch (f)
                    {
                        case TrainerModelType: modelType = v; break;
                        case TrainerWhitespaceAsSuffix: suffix = v != 0; break;
                        case TrainerByteFallback: byteFallback = v != 0; break;
                        case TrainerUnkId: unk = v; break;
                        case TrainerBosId: bos = v; break;
                        case TrainerEosId: eos = v; break;
                        case TrainerPadId: pad = v; break;
                    }
                }
            }
            else if (field == ModelNormalizerSpec && wire == 2)
            {
                var spec = new ProtobufReader(reader.Bytes());
                while (spec.Next(out int f, out int w))
                {
                    if (f == NormalizerCharsMap && w == 2) charsMap = spec.Bytes().Length > 0;
                    else if (w == 0 && f is NormalizerAddDummyPrefix or NormalizerRemoveExtraWhitespaces or NormalizerEscapeWhitespaces)
                    {
                        bool v = spec.Varint() != 0;
                        if (f == NormalizerAddDummyPrefix) addDummyPrefix = v;
                        else if (f == NormalizerRemoveExtraWhitespaces) removeExtra = v;
                        else escape = v;
                    }
                    else spec.Skip(w);
                }
            }
            else reader.Skip(wire);
        }
        if (pieces.Count == 0) throw new InvalidDataException("no pieces");
        foreach (var (id, what) in new[] { (unk, "unk_id"), (bos, "bos_id"), (eos, "eos_id"), (pad, "pad_id") })
            if (id < -1 || id >= pieces.Count) throw new InvalidDataException($"{what} {id} is outside the {pieces.Count} pieces");
        if (unk < 0) throw new InvalidDataException("unk_id must not be -1");
        return new SentencePieceModel(pieces, modelType == Bpe, byteFallback, addDummyPrefix, removeExtra, escape, suffix, charsMap, unk, bos, eos, pad);
    }

    /// <summary>
    /// The model as a ModelProto: the pieces, a trainer spec with the algorithm, byte fallback and special ids, and a
    /// normalizer spec ("identity", no character map) with the whitespace rules. Every field is written, none left to defaults.
    /// </summary>
    public byte[] ToBytes()
    {
        if (HasCharsMap) throw new NotSupportedException("A SentencePiece model with a precompiled normalization map cannot be written back (the map is not kept).");
        var output = new MemoryStream();
        foreach (var p in Pieces)
        {
            var piece = new MemoryStream();
            WriteBytes(piece, PieceText, Encoding.UTF8.GetBytes(p.Piece));
            WriteFloat(piece, PieceScore, p.Score);
            WriteVarint(piece, PieceType, (long)p.Type);
            WriteBytes(output, ModelPieces, piece.ToArray());
        }
        var trainer = new MemoryStream();
        WriteVarint(trainer, TrainerModelType, IsBpe ? Bpe : Unigram);
        WriteVarint(trainer, TrainerWhitespaceAsSuffix, TreatWhitespaceAsSuffix ? 1 : 0);
        WriteVarint(trainer, TrainerByteFallback, ByteFallback ? 1 : 0);
        WriteVarint(trainer, TrainerUnkId, UnkId);
        WriteVarint(trainer, TrainerBosId, BosId);
        WriteVarint(trainer, TrainerEosId, EosId);
        WriteVarint(trainer, TrainerPadId, PadId);
        WriteBytes(output, ModelTrainerSpec, trainer.ToArray());
        var normalizer = new MemoryStream();
        WriteBytes(normalizer, NormalizerName, "identity"u8.ToArray());
        WriteVarint(normalizer, NormalizerAddDummyPrefix, AddDummyPrefix ? 1 : 0);
        WriteVarint(normalizer, NormalizerRemoveExtraWhitespaces, RemoveExtraWhitespaces ? 1 : 0);
        WriteVarint(normalizer, NormalizerEscapeWhitespaces, EscapeWhitespaces ? 1 : 0);
        WriteBytes(output, ModelNormalizerSpec, normalizer.ToArray());
        return output.ToArray();
    }

    private static void WriteKey(Stream s, int field, int wire) => WriteRawVarint(s, (ulong)((field << 3) | wire));

    // Negative int32 values are written as ten-byte varints, as protobuf does.
    private static void WriteVarint(Stream s, int field, long value) { WriteKey(s, field, 0); WriteRawVarint(s, (ulong)value); }

    private static void WriteFloat(Stream s, int field, float value)
    {
        WriteKey(s, field, 5);
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteSingleLittleEndian(b, value);
        s.Write(b);
    }

    private static void WriteBytes(Stream s, int field, byte[] value) { WriteKey(s, field, 2); WriteRawVarint(s, (ulong)value.Length); s.Write(value); }

    private static void WriteRawVarint(Stream s, ulong value)
    {
        while (value >= 0x80) { s.WriteByte((byte)(value | 0x80)); value >>= 7; }
        s.WriteByte((byte)value);
    }
}
