using System.Globalization;
using KvSharp.Cache;

namespace KvSharp.Compression.Scorers;

/// <summary>
/// SnapKV: the attention the last <see cref="Window"/> context queries (query-aware: the question's queries) give each
/// earlier token, summed over the window and averaged over the GQA group, then pooled along the stored tokens
/// (kernel <see cref="Kernel"/>, stride 1, zero padding; "avg" divides by the kernel as torch's avg_pool1d does).
/// The window itself is always kept (score +∞) and counts against the budget.
/// </summary>
public sealed class SnapKvScorer : IScorer
{
    /// <summary>Creates the scorer.</summary>
    /// <exception cref="KvSharpException">A parameter is out of range.</exception>
    public SnapKvScorer(int window = 32, int kernel = 7, string pool = "avg")
    {
        if (window < 1) throw new KvSharpException($"snapkv: window must be ≥ 1, got {window}");
        if (kernel < 1 || kernel % 2 == 0) throw new KvSharpException($"snapkv: kernel must be odd and ≥ 1, got {kernel}");
        if (pool is not ("avg" or "max")) throw new KvSharpException($"snapkv: pool must be avg or max, got {pool}");
        Window = window; Kernel = kernel; Pool = pool;
    }

    /// <summary>Observed queries (query-agnostic).</summary>
    public int Window { get; }

    /// <summary>Pooling kernel (odd).</summary>
    public int Kernel { get; }

    /// <summary>"avg" or "max".</summary>
    public string Pool { get; }

    /// <inheritdoc />
    public string Text => string.Create(CultureInfo.InvariantCulture, $"snapkv:window={Window},kernel={Kernel},pool={Pool}");

    /// <inheritdoc />
    public HeadScores Score(PressContext context)
    {
        var scores = ObservationWindow.Observe(context, Window, GroupFold.Mean, (s, l, h) => s.SumProbability(l, h).ToArray());
        for (int i = 0; i < scores.HeadCount; i++) Pool1D(scores[i], Kernel, Pool == "max");
        return scores;
    }

    /// <summary>
    /// Pools the finite scores in place (the +∞ window is left out and left as is): out[i] = mean (or max) of
    /// in[i−k/2 .. i+k/2], positions outside the finite run counting as 0 (avg divides by k).
    /// </summary>
    public static void Pool1D(float[] scores, int kernel, bool max)
    {
        int n = 0;
        while (n < scores.Length && float.IsFinite(scores[n])) n++;
        var src = scores.AsSpan(0, n).ToArray();
        int r = kernel / 2;
        for (int i = 0; i < n; i++)
        {
            double acc = max ? double.NegativeInfinity : 0;
            for (int j = i - r; j <= i + r; j++)
            {
                double v = j >= 0 && j < n ? src[j] : 0;
                acc = max ? Math.Max(acc, v) : acc + v;
            }
            scores[i] = (float)(max ? acc : acc / kernel);
        }
    }
}
