using System.Linq.Expressions;
using System.Reflection;
using Microsoft.Extensions.VectorData.ProviderServices;
using Npgsql;

namespace MLNetPeft.Retrieval.VectorStores.PgVector;

/// <summary>
/// Turns a VectorData filter (a LINQ predicate over the record) into a SQL condition with parameters: comparisons
/// (==, !=, &lt;, &lt;=, &gt;, &gt;=, null tests), &amp;&amp;, ||, !, boolean properties, and <c>values.Contains(r.Property)</c>
/// (= ANY). Values not taken from the record (constants, captured variables) become parameters, never SQL text.
/// </summary>
internal sealed class PgSqlFilter
{
    private readonly CollectionModel _model;
    private readonly ParameterExpression _record;
    private readonly List<NpgsqlParameter> _parameters;

    private PgSqlFilter(CollectionModel model, ParameterExpression record, List<NpgsqlParameter> parameters)
    {
        _model = model;
        _record = record;
        _parameters = parameters;
    }

    /// <summary>The SQL condition of <paramref name="filter"/>; its parameters are added to <paramref name="parameters"/>.</summary>
    public static string Translate(CollectionModel model, LambdaExpression filter, List<NpgsqlParameter> parameters) =>
        new PgSqlFilter(model, filter.Parameters[0], parameters).Sql(filter.Body);

    private string Sql(Expression e) => e switch
    {
        BinaryExpression { NodeType: ExpressionType.AndAlso } b => $"({Sql(b.Left)} AND {Sql(b.Right)})",
        BinaryExpression { NodeType: ExpressionType.OrElse } b => $"({Sql(b.Left)} OR {Sql(b.Right)})",
        BinaryExpression b when Comparison(b.NodeType) is { } op => Compare(b, op),
        UnaryExpression { NodeType: ExpressionType.Not } u => $"(NOT {Sql(u.Operand)})",
        UnaryExpression { NodeType: ExpressionType.Convert } u when FromRecord(u.Operand) => Sql(u.Operand),
        MemberExpression m when FromRecord(m) && m.Type == typeof(bool) => Column(m),
        MethodCallExpression { Method.Name: "Contains" } call => Contains(call),
        _ when !FromRecord(e) && e.Type == typeof(bool) => Parameter(Evaluate(e)),
        _ => throw new NotSupportedException($"The filter part '{e}' cannot be turned into SQL; use comparisons of record properties with values, &&, ||, ! and Contains."),
    };

    private static string? Comparison(ExpressionType type) => type switch
    {
        ExpressionType.Equal => "=", ExpressionType.NotEqual => "<>", ExpressionType.LessThan => "<", ExpressionType.LessThanOrEqual => "<=",
        ExpressionType.GreaterThan => ">", ExpressionType.GreaterThanOrEqual => ">=", _ => null,
    };

    private string Compare(BinaryExpression b, string op)
    {
        var (left, right) = (Strip(b.Left), Strip(b.Right));
        if (!FromRecord(left) && FromRecord(right))
        {
            (left, right) = (right, left);
            op = op switch { "<" => ">", "<=" => ">=", ">" => "<", ">=" => "<=", _ => op };
        }
        if (left is not MemberExpression member || !FromRecord(member) || FromRecord(right))
            throw new NotSupportedException($"The filter comparison '{b}' must compare a record property with a value.");
        var value = Evaluate(right);
        if (value is null)
        {
            return op switch
            {
                "=" => $"({Column(member)} IS NULL)",
                "<>" => $"({Column(member)} IS NOT NULL)",
                _ => throw new NotSupportedException($"The filter comparison '{b}' compares with null using '{op}'."),
            };
        }
        return $"({Column(member)} {op} {Parameter(value)})";
    }

    private string Contains(MethodCallExpression call)
    {
        // list.Contains(r.X) (instance or Enumerable.Contains) → r.X = ANY(@p).
        Expression? source = call.Object ?? (call.Arguments.Count == 2 ? call.Arguments[0] : null);
        Expression? item = call.Object is null ? (call.Arguments.Count == 2 ? call.Arguments[1] : null) : call.Arguments.FirstOrDefault();
        // C# 14 binds array.Contains(x) to MemoryExtensions.Contains(span, x): the array is under an implicit conversion to a span.
        if (source is MethodCallExpression { Method.Name: "op_Implicit", Arguments.Count: 1 } toSpan) source = toSpan.Arguments[0];
        if (source is null || item is null || FromRecord(source) || Strip(item) is not MemberExpression member || !FromRecord(member))
            throw new NotSupportedException($"The filter part '{call}' is not values.Contains(record.Property).");
        var values = ((System.Collections.IEnumerable)Evaluate(source)!).Cast<object?>().ToArray();
        var elementType = Nullable.GetUnderlyingType(member.Type) ?? member.Type;
        var typed = Array.CreateInstance(elementType, values.Length);
        for (int i = 0; i < values.Length; i++) typed.SetValue(values[i], i);
        return $"({Column(member)} = ANY({Parameter(typed)}))";
    }

    private string Column(MemberExpression member)
    {
        var property = _model.Properties.FirstOrDefault(p => p.ModelName == member.Member.Name)
            ?? throw new NotSupportedException($"The filter uses '{member.Member.Name}', which is not a property of the record model.");
        if (property is VectorPropertyModel) throw new NotSupportedException($"The filter uses vector property '{property.ModelName}'.");
        return PgSql.Quote(property.StorageName);
    }

    private string Parameter(object? value)
    {
        var name = $"f{_parameters.Count}";
        _parameters.Add(new NpgsqlParameter(name, value ?? DBNull.Value));
        return "@" + name;
    }

    private bool FromRecord(Expression e) => new ParameterFinder(_record).Finds(e);

    private static Expression Strip(Expression e) => e is UnaryExpression { NodeType: ExpressionType.Convert } u ? Strip(u.Operand) : e;

    // A part that does not touch the record is a value: a constant, a captured variable or an expression of them.
    private static object? Evaluate(Expression e) => e switch
    {
        ConstantExpression c => c.Value,
        MemberExpression { Expression: ConstantExpression c, Member: FieldInfo f } => f.GetValue(c.Value),
        MemberExpression { Expression: ConstantExpression c, Member: PropertyInfo p } => p.GetValue(c.Value),
        _ => Expression.Lambda(e).Compile().DynamicInvoke(),
    };

    private sealed class ParameterFinder(ParameterExpression parameter) : ExpressionVisitor
    {
        private bool _found;

        public bool Finds(Expression e)
        {
            _found = false;
            Visit(e);
            return _found;
        }

        protected override Expression VisitParameter(ParameterExpression node)
        {
            if (node == parameter) _found = true;
            return node;
        }
    }
}
