using KvSharp.Compression.Actions;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Scorers;

namespace KvSharp.Compression.Presses;

/// <summary>
/// A press = scorer × budget × action. The scorer scores every stored token; tokens before
/// <see cref="PressContext.ProtectedPrefix"/> are set aside (always kept, outside the budget); the budget decides how
/// many of the other (candidate) tokens each head keeps; each head keeps its best-scoring candidates (all +∞ ones
/// included, ties to the later token) and the action handles the rest. Layers that share another layer's KV
/// (KVSharer) are left alone and outside the budget.
/// </summary>
public sealed class ScoredPress(IScorer scorer, IBudget budget, IPressAction? action = null) : IKvPress
{
    /// <summary>The scorer.</summary>
    public IScorer Scorer { get; } = scorer ?? throw new ArgumentNullException(nameof(scorer));

    /// <summary>The budget.</summary>
    public IBudget Budget { get; } = budget ?? throw new ArgumentNullException(nameof(budget));

    /// <summary>The action on tokens not kept (default: evict).</summary>
    public IPressAction Action { get; } = action ?? EvictAction.Instance;

    /// <inheritdoc />
    public string Text => $"{Scorer.Text}+{Budget.Text}" + (Action is EvictAction ? "" : $"+{Action.Name}");

    /// <inheritdoc />
    public void Compress(PressContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var masks = Select(context);
        for (int l = 0; l < context.Layers; l++)
            if (context.Cache.SharedLayerSource(l) < 0) // a shared layer stores nothing: its source is compressed instead
                for (int h = 0; h < context.KvHeads; h++)
                    Action.Apply(context, l, h, masks[l * context.KvHeads + h]);
    }

    /// <summary>Keep flags per head (index layer × KvHeads + kvHead) over its stored tokens, without applying them.</summary>
    public bool[][] Select(PressContext context) => Select(context, out _);

    /// <summary>As <see cref="Select(PressContext)"/>, also returning the scorer's scores (for presses that refine the selection).</summary>
    public bool[][] Select(PressContext context, out HeadScores scores)
    {
        ArgumentNullException.ThrowIfNull(context);
        scores = Scorer.Score(context);
        var candidates = context.NewScores();
        var first = new int[candidates.HeadCount];
        for (int l = 0; l < context.Layers; l++)
            for (int h = 0; h < context.KvHeads; h++)
            {
                var positions = context.Cache.Positions(l, h);
                var s = scores[l, h];
                if (s.Length != positions.Count)
                    throw new InvalidOperationException($"{Scorer.Text} gave {s.Length} scores for layer {l} head {h}, which stores {positions.Count} tokens");
                int p = 0;
                while (p < positions.Count && positions[p] < context.ProtectedPrefix) p++;
                if (context.Cache.SharedLayerSource(l) >= 0) p = positions.Count; // kept whole, outside the budget
                first[l * context.KvHeads + h] = p;
                candidates[l, h] = s[p..];
            }
        return KeepMasks(Budget, candidates, first);
    }

    /// <summary>
    /// Keep flags per head from its candidates' scores: the <paramref name="first"/>[head] tokens before the candidates
    /// (the protected prefix) kept outside the budget, then the budget's count of each head's best candidates (all +∞ ones
    /// included, ties to the later token). Shared with presses that score elsewhere (the CUDA backend's KVzip).
    /// </summary>
    internal static bool[][] KeepMasks(IBudget budget, HeadScores candidates, IReadOnlyList<int> first)
    {
        var counts = budget.Allocate(candidates);
        var masks = new bool[candidates.HeadCount][];
        for (int i = 0; i < masks.Length; i++)
        {
            var c = candidates[i];
            var keep = TopK.KeepMask(c, Math.Clamp(counts[i], 0, c.Length));
            masks[i] = new bool[first[i] + c.Length];
            Array.Fill(masks[i], true, 0, first[i]);
            keep.CopyTo(masks[i], first[i]);
        }
        return masks;
    }
}
