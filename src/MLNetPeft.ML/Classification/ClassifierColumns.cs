using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;

namespace MLNetPeft.ML.Classification;

/// <summary>
/// What the classifiers' row mappers share: reading text columns, computing a row's class probabilities once for all
/// its output columns, and the multiclass outputs (a probability vector and a key with the label's key values).
/// </summary>
internal static class ClassifierColumns
{
    /// <summary>The most classes a saved classifier may declare (bounds what loading a zip allocates).</summary>
    public const int MaxClasses = 100_000;

    /// <summary>The index of a scalar text column, or a schema error naming it.</summary>
    public static int Text(IExceptionContext ectx, DataViewSchema schema, string name)
    {
        var column = schema.GetColumnOrNull(name) ?? throw ectx.ExceptSchemaMismatch(nameof(schema), "sentence", name);
        if (column.Type is not TextDataViewType) throw ectx.ExceptSchemaMismatch(nameof(schema), "sentence", name, "String", column.Type.ToString());
        return column.Index;
    }

    /// <summary>
    /// Checks the text columns and the label (<paramref name="binary"/>: Boolean, otherwise a key) of an input shape,
    /// naming what is wrong; returns the input's columns with the classifier's outputs added.
    /// </summary>
    public static SchemaShape OutputShape(IExceptionContext ectx, SchemaShape inputSchema, IEnumerable<string> textColumns, string labelColumn, bool binary,
        string score, string predictedLabel, string? probability = null)
    {
        foreach (var name in textColumns)
        {
            if (!inputSchema.TryFindColumn(name, out var text)) throw ectx.ExceptSchemaMismatch(nameof(inputSchema), "sentence", name);
            if (text.Kind != SchemaShape.Column.VectorKind.Scalar || text.ItemType is not TextDataViewType)
                throw ectx.ExceptSchemaMismatch(nameof(inputSchema), "sentence", name, "String", text.GetTypeString());
        }
        if (!inputSchema.TryFindColumn(labelColumn, out var label)) throw ectx.ExceptSchemaMismatch(nameof(inputSchema), "label", labelColumn);
        var columns = inputSchema.ToDictionary(c => c.Name);
        if (binary)
        {
            if (label.Kind != SchemaShape.Column.VectorKind.Scalar || label.ItemType is not BooleanDataViewType)
                throw ectx.ExceptSchemaMismatch(nameof(inputSchema), "label", labelColumn, "Boolean", label.GetTypeString());
            columns[score] = new SchemaShape.Column(score, SchemaShape.Column.VectorKind.Scalar, NumberDataViewType.Single, false);
            if (probability is not null) columns[probability] = new SchemaShape.Column(probability, SchemaShape.Column.VectorKind.Scalar, NumberDataViewType.Single, false);
            columns[predictedLabel] = new SchemaShape.Column(predictedLabel, SchemaShape.Column.VectorKind.Scalar, BooleanDataViewType.Instance, false);
        }
        else
        {
            if (!label.IsKey || label.Kind != SchemaShape.Column.VectorKind.Scalar)
                throw ectx.ExceptSchemaMismatch(nameof(inputSchema), "label", labelColumn, "Key (use MapValueToKey)", label.GetTypeString());
            columns[score] = new SchemaShape.Column(score, SchemaShape.Column.VectorKind.Vector, NumberDataViewType.Single, false);
            columns[predictedLabel] = new SchemaShape.Column(predictedLabel, SchemaShape.Column.VectorKind.Scalar, NumberDataViewType.UInt32, true, label.Annotations);
        }
        return new SchemaShape(columns.Values);
    }

    /// <summary>The label column's key values as text, or null when it has none (or not as text).</summary>
    public static IReadOnlyList<string>? KeyValues(DataViewSchema.Column label)
    {
        if (label.Annotations.Schema.GetColumnOrNull(AnnotationUtils.Kinds.KeyValues) is not { Type: VectorDataViewType { ItemType: TextDataViewType } }) return null;
        VBuffer<ReadOnlyMemory<char>> values = default;
        label.Annotations.GetValue(AnnotationUtils.Kinds.KeyValues, ref values);
        return values.DenseValues().Select(v => v.ToString()).ToList();
    }

    /// <summary>
    /// A function giving the current row's probabilities, computed once per row position however many output
    /// columns ask for them.
    /// </summary>
    public static Func<float[]> RowProbabilities(DataViewRow input, int first, int second, Func<string, string?, float[]> classify)
    {
        var getFirst = input.GetGetter<ReadOnlyMemory<char>>(input.Schema[first]);
        var getSecond = second < 0 ? null : input.GetGetter<ReadOnlyMemory<char>>(input.Schema[second]);
        long position = -1;
        float[] cached = [];
        return () =>
        {
            if (input.Position != position)
            {
                ReadOnlyMemory<char> a = default, b = default;
                getFirst(ref a);
                getSecond?.Invoke(ref b);
                cached = classify(a.ToString(), getSecond is null ? null : b.ToString());
                position = input.Position;
            }
            return cached;
        };
    }

    /// <summary>The multiclass outputs: probabilities [classes] and the predicted key, with the label's key values when known.</summary>
    public static DataViewSchema.DetachedColumn[] Multiclass(string score, string predictedLabel, int classes, IReadOnlyList<string>? keyValues)
    {
        DataViewSchema.Annotations? annotations = null;
        if (keyValues is not null)
        {
            var builder = new DataViewSchema.Annotations.Builder();
            builder.AddKeyValues(keyValues.Count, TextDataViewType.Instance, (ref VBuffer<ReadOnlyMemory<char>> dst) =>
                dst = new VBuffer<ReadOnlyMemory<char>>(keyValues.Count, keyValues.Select(v => v.AsMemory()).ToArray()));
            annotations = builder.ToAnnotations();
        }
        return [new(score, new VectorDataViewType(NumberDataViewType.Single, classes)), new(predictedLabel, new KeyDataViewType(typeof(uint), classes), annotations)];
    }

    /// <summary>Getter of multiclass output <paramref name="iinfo"/> (0: probabilities, 1: predicted key, counting from 1).</summary>
    public static Delegate MulticlassGetter(int iinfo, Func<float[]> row) => iinfo == 0
        ? (ValueGetter<VBuffer<float>>)((ref VBuffer<float> v) => { var p = row(); v = new VBuffer<float>(p.Length, (float[])p.Clone()); })
        : (ValueGetter<uint>)((ref uint v) => { var p = row(); v = (uint)Array.IndexOf(p, p.Max()) + 1; });
}
