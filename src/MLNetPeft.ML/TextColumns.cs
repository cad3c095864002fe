using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;

namespace MLNetPeft.ML;

/// <summary>The column checks every text stage makes: the column exists and holds text, or an error names it and its role.</summary>
internal static class TextColumns
{
    /// <summary>Throws unless <paramref name="schema"/> has a text column <paramref name="column"/> (its role, e.g. "prompt", goes into the message).</summary>
    public static void Require(DataViewSchema schema, string column, string role, IExceptionContext ectx)
    {
        var c = schema.GetColumnOrNull(column) ?? throw ectx.ExceptSchemaMismatch(nameof(schema), role, column);
        if (c.Type is not TextDataViewType) throw ectx.ExceptSchemaMismatch(nameof(schema), role, column, "String", c.Type.ToString());
    }

    /// <summary>The same check on a schema shape (an estimator's <c>GetOutputSchema</c>).</summary>
    public static void Require(SchemaShape shape, string column, string role, IExceptionContext ectx)
    {
        if (!shape.TryFindColumn(column, out var c)) throw ectx.ExceptSchemaMismatch(nameof(shape), role, column);
        if (c.Kind != SchemaShape.Column.VectorKind.Scalar || c.ItemType is not TextDataViewType)
            throw ectx.ExceptSchemaMismatch(nameof(shape), role, column, "String", c.GetTypeString());
    }
}
