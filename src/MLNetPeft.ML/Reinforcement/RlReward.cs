using MLNetPeft.Training.RewardModeling;

namespace MLNetPeft.ML.Reinforcement;

/// <summary>A reward that also reads columns of the prompt's row, e.g. the expected answer of a verifiable task.</summary>
/// <param name="prompt">The prompt as the view holds it.</param>
/// <param name="response">The sampled response, cut before a stop string.</param>
/// <param name="columns">The values of the reward's columns in the prompt's row, by column name.</param>
public delegate float RowReward(string prompt, string response, IReadOnlyDictionary<string, string> columns);

/// <summary>
/// A reward of the RL estimators: a reward-model transformer (it is an <see cref="IRewardFunction"/>), any other
/// <see cref="IRewardFunction"/>, a delegate of (prompt, response), or a <see cref="RowReward"/> that reads text columns
/// of the prompt's row. Its name labels the metrics; GRPO sums several with their weights.
/// </summary>
public sealed class RlReward
{
    private readonly IRewardFunction? _function;
    private readonly RowReward? _rowReward;

    private RlReward(string name, double weight, IRewardFunction? function, RowReward? rowReward, IReadOnlyList<string> columns)
    {
        if (string.IsNullOrWhiteSpace(name)) throw new ArgumentException("A reward needs a name.", nameof(name));
        if (!double.IsFinite(weight)) throw new ArgumentOutOfRangeException(nameof(weight), weight, "must be a finite number");
        Name = name;
        Weight = weight;
        _function = function;
        _rowReward = rowReward;
        Columns = columns;
    }

    public string Name { get; }
    public double Weight { get; }
    /// <summary>The reward function given (null for a <see cref="RowReward"/>).</summary>
    public IRewardFunction? Function => _function;
    /// <summary>The text columns of the prompt's row the reward reads (empty unless it is a <see cref="RowReward"/>).</summary>
    public IReadOnlyList<string> Columns { get; }

    /// <summary>A reward model (e.g. the transformer <c>TrainRewardModel</c> fits) or any other reward function.</summary>
    public static RlReward From(IRewardFunction function, string name = "reward", double weight = 1.0) =>
        new(name, weight, function ?? throw new ArgumentNullException(nameof(function)), null, []);

    /// <summary>A reward computed from the prompt and the response.</summary>
    public static RlReward From(Func<string, string, float> score, string name = "reward", double weight = 1.0) =>
        From(RewardFunction.FromDelegate(score ?? throw new ArgumentNullException(nameof(score))), name, weight);

    /// <summary>A reward that reads <paramref name="columns"/> of the prompt's row too.</summary>
    public static RlReward FromRow(RowReward score, IReadOnlyList<string> columns, string name = "reward", double weight = 1.0)
    {
        ArgumentNullException.ThrowIfNull(score);
        ArgumentNullException.ThrowIfNull(columns);
        if (columns.Count == 0 || columns.Any(string.IsNullOrWhiteSpace)) throw new ArgumentException("A row reward names the columns it reads.", nameof(columns));
        return new(name, weight, null, score, columns.ToArray());
    }

    /// <summary>The reward as the trainers call it, its row reward bound to the columns of each prompt's row.</summary>
    internal IRewardFunction Bind(IReadOnlyDictionary<string, IReadOnlyDictionary<string, string>> columnsByPrompt) =>
        _function ?? new BoundRowReward(_rowReward!, columnsByPrompt);

    private sealed class BoundRowReward(RowReward score, IReadOnlyDictionary<string, IReadOnlyDictionary<string, string>> columnsByPrompt) : IRewardFunction
    {
        public float[] Score(IReadOnlyList<string> prompts, IReadOnlyList<string> responses) =>
            prompts.Select((p, i) => score(p, responses[i], columnsByPrompt[p])).ToArray();
    }
}
