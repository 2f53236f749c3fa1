using System.Globalization;
using KvSharp.Compression.Budgets;
using KvSharp.Compression.Scorers;

namespace KvSharp.Compression.Presses;

/// <summary>
/// KVzip's head level with calibrated head scores (<c>kvzip:level=head,keep=0.3,file=F.json</c>, the file written by
/// <c>kvsharp calibrate kvzip-heads</c>). No scoring pass runs on the context: heads are ranked by the file's scores,
/// every head keeps its first <see cref="Sinks"/> positions and its last <see cref="Window"/> stored tokens (as
/// DuoAttention's streaming heads, which KVzip's head level follows), and the best heads keep their whole context as
/// long as the total stays within the keep target (<see cref="HeadBudget"/>'s profile rule). The other tokens are
/// evicted, so whole heads' blocks go back to the pool.
/// </summary>
public sealed class KvzipHeadPress : IKvPress
{
    private readonly ScoredPress _inner;

    /// <summary>Creates the press over a head budget that carries a calibrated profile.</summary>
    /// <exception cref="ArgumentException">The budget has no profile.</exception>
    public KvzipHeadPress(HeadBudget budget, int sinks = 4, int window = 32)
    {
        ArgumentNullException.ThrowIfNull(budget);
        if (budget.Profile == null) throw new ArgumentException("the head budget needs a calibrated profile", nameof(budget));
        ArgumentOutOfRangeException.ThrowIfNegative(sinks);
        ArgumentOutOfRangeException.ThrowIfNegative(window);
        Sinks = sinks;
        Window = window;
        Budget = budget;
        _inner = new ScoredPress(new SinkWindowScorer(sinks, window), budget);
    }

    /// <summary>The head budget with its profile.</summary>
    public HeadBudget Budget { get; }

    /// <summary>Leading positions every head keeps.</summary>
    public int Sinks { get; }

    /// <summary>Most recent stored tokens every head keeps.</summary>
    public int Window { get; }

    /// <inheritdoc />
    public string Text => string.Create(CultureInfo.InvariantCulture, $"kvzip+{Budget.Text},sinks={Sinks},window={Window}");

    /// <inheritdoc />
    public void Compress(PressContext context) => _inner.Compress(context);

    /// <summary>+∞ for the sinks and the last <c>window</c> stored tokens of each head, 0 elsewhere.</summary>
    private sealed class SinkWindowScorer(int sinks, int window) : IScorer
    {
        public string Text => $"sinks={sinks},window={window}";

        public HeadScores Score(PressContext context)
        {
            var scores = context.NewScores();
            for (int l = 0; l < context.Layers; l++)
                for (int h = 0; h < context.KvHeads; h++)
                {
                    var positions = context.Cache.Positions(l, h);
                    var s = new float[positions.Count];
                    for (int i = 0; i < s.Length; i++)
                        if (positions[i] < sinks || i >= s.Length - window) s[i] = float.PositiveInfinity;
                    scores[l, h] = s;
                }
            return scores;
        }
    }
}
