using KvSharp.Generation.Sampling;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// The sampling rules written out the slow way, for checking the CPU <see cref="Sampler"/> and the device sampler: sort
/// the whole vocabulary by logit (descending, lower id first), cut top-k, the shortest prefix reaching top-p (temperature
/// 1), min-p, then draw over the survivors in id order with the given uniform number. Float64 sums in plain sequence.
/// </summary>
public sealed class ReferenceSampler
{
    private readonly int[] _kept;       // survivors in id order
    private readonly double[] _p;       // their unnormalized probabilities at the temperature
    private readonly double _total;
    private readonly double _cutMargin; // the top-p cut's margin
    private readonly int _greedy = -1;

    /// <summary>
    /// Applies penalty, top-k, top-p and min-p of <paramref name="o"/> to <paramref name="logits"/> after
    /// <paramref name="recent"/>; <see cref="Draw"/> then picks among the survivors.
    /// </summary>
    public ReferenceSampler(float[] logits, int[] recent, SamplerOptions o)
    {
        var work = (float[])logits.Clone();
        int window = o.RepetitionPenalty == 1f ? 0 : o.RepeatLastN < 0 ? recent.Length : Math.Min(o.RepeatLastN, recent.Length);
        foreach (int id in recent.Skip(recent.Length - window).Distinct())
            work[id] = work[id] <= 0 ? work[id] * o.RepetitionPenalty : work[id] / o.RepetitionPenalty;

        var rank = Enumerable.Range(0, work.Length).OrderByDescending(i => work[i]).ThenBy(i => i).ToList();
        _cutMargin = double.PositiveInfinity;
        _kept = [];
        _p = [];
        if (o.IsGreedy) { _greedy = rank[0]; return; }
        if (o.TopK > 0 && o.TopK < rank.Count) rank = rank.Take(o.TopK).ToList();
        float max = work[rank[0]];
        if (o.TopP < 1f)
        {
            var mass = rank.Select(i => Math.Exp(work[i] - max)).ToArray(); // float difference, as the CPU sampler
            double sum = 0;
            foreach (double m in mass) sum += m;
            double target = o.TopP * sum, cumulative = 0;
            for (int j = 0; j < rank.Count; j++)
            {
                _cutMargin = Math.Min(_cutMargin, Math.Abs(cumulative - target) / sum);
                cumulative += mass[j];
                _cutMargin = Math.Min(_cutMargin, Math.Abs(cumulative - target) / sum);
                if (cumulative >= target) { rank = rank.Take(j + 1).ToList(); break; }
            }
        }
        if (o.MinP > 0f)
        {
            float threshold = max + MathF.Log(o.MinP);
            rank = rank.Where(i => !(work[i] < threshold)).ToList();
        }
        _kept = rank.OrderBy(i => i).ToArray();
        float inverseTemperature = 1f / o.Temperature;
        _p = _kept.Select(i => Math.Exp(((double)work[i] - max) * inverseTemperature)).ToArray();
        foreach (double x in _p) _total += x;
    }

    /// <summary>
    /// The token chosen with the uniform <paramref name="u"/> (ignored for greedy options). <paramref name="margin"/> is
    /// the smallest distance, relative to the sum it was compared with, between the top-p or draw target and a running
    /// sum: an implementation adding in another order can choose differently only where it is at rounding level.
    /// </summary>
    public int Draw(double u, out double margin)
    {
        margin = _cutMargin;
        if (_greedy >= 0) return _greedy;
        double at = u * _total, running = 0;
        for (int j = 0; j < _kept.Length; j++)
        {
            if (_p[j] <= 0) continue;
            running += _p[j];
            margin = Math.Min(margin, Math.Abs(running - at) / _total);
            if (at < running) return _kept[j];
        }
        return _kept[^1];
    }

    /// <summary>The uniform numbers a sampler seeded with <paramref name="seed"/> draws, in order.</summary>
    public static IEnumerable<double> Uniforms(ulong seed)
    {
        var rng = new Xoshiro256StarStar(seed);
        while (true) yield return rng.NextDouble();
    }
}
