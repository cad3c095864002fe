using Microsoft.ML;
using Microsoft.ML.Data;

namespace MLNetPeft.ML;

public static class TransformerSearch
{
    /// <summary>
    /// The first transformer of type <typeparamref name="T"/> in <paramref name="model"/>: the model itself or a step of
    /// its chain (as <c>mlContext.Model.Load</c> returns a fitted pipeline); null when there is none.
    /// </summary>
    public static T? FindTransformer<T>(this ITransformer model) where T : class, ITransformer => model switch
    {
        T match => match,
        TransformerChain<ITransformer> chain => chain.Select(FindTransformer<T>).FirstOrDefault(t => t is not null),
        _ => null,
    };
}
