using System.Globalization;
using KvSharp.Cache;

namespace KvSharp.Compression.Decoding;

/// <summary>
/// H2O during decoding: every token's score is the attention it has received from the generated queries so far
/// (each query's softmax probability, averaged over the GQA group, summed over queries), accumulated step by step
/// through the cache's statistics pass; the <see cref="Window"/> most recent positions are always kept. A token's
/// weight from its own query is not counted (the statistics cover tokens stored before the step), nor are the
/// prefill's queries (the prompt ran before the session started).
/// </summary>
public sealed class H2oDecodePress : DecodePress
{
    /// <summary>Creates the press.</summary>
    /// <exception cref="KvSharpException">A value is out of range.</exception>
    public H2oDecodePress(int tokens = 1024, int every = 1, int window = 32, int protect = 1) : base("h2o", tokens, every, protect)
    {
        if (window < 0) throw new KvSharpException($"h2o (decode): window must be ≥ 0, got {window}");
        Window = window;
    }

    /// <summary>Most recent positions always kept (they count against the budget).</summary>
    public int Window { get; }

    /// <inheritdoc />
    public override string Text => string.Create(CultureInfo.InvariantCulture, $"h2o:tokens={Tokens},every={Every},window={Window},protect={Protect}");

    internal override DecodePressSession CreateSession(IDecodeCache cache) => new Session(this, cache);

    private sealed class Session(H2oDecodePress press, IDecodeCache cache) : DecodePressSession(press, cache)
    {
        private readonly int[][] _positions = new int[cache.Layers * cache.KvHeads][];
        private readonly double[][] _sums = new double[cache.Layers * cache.KvHeads][];
        private bool _collecting;

        public override void BeforeStep(int step)
        {
            Cache.BeginStatistics(new AttentionStatisticsRequest(Cache.Length, GroupFold.Mean));
            _collecting = true;
        }

        public override void AfterStep(int step)
        {
            var stats = Cache.EndStatistics();
            _collecting = false;
            for (int l = 0; l < Cache.Layers; l++)
                for (int h = 0; h < Cache.KvHeads; h++)
                {
                    int i = l * Cache.KvHeads + h;
                    var sums = Realign(i, Cache.Positions(l, h));
                    var add = Align(Cache.Positions(l, h), stats.Positions(l, h), stats.SumProbability(l, h), 0);
                    for (int t = 0; t < sums.Length; t++) sums[t] += add[t];
                }
            base.AfterStep(step);
        }

        protected override HeadScores Score()
        {
            var scores = new HeadScores(Cache.Layers, Cache.KvHeads);
            int recent = Cache.Length - ((H2oDecodePress)Press).Window;
            for (int l = 0; l < Cache.Layers; l++)
                for (int h = 0; h < Cache.KvHeads; h++)
                {
                    var positions = Cache.Positions(l, h);
                    var sums = Realign(l * Cache.KvHeads + h, positions);
                    var s = new float[positions.Count];
                    for (int t = 0; t < s.Length; t++) s[t] = positions[t] >= recent ? float.PositiveInfinity : (float)sums[t];
                    scores[l, h] = s;
                }
            return scores;
        }

        /// <summary>The accumulated sums of head <paramref name="i"/> moved onto <paramref name="stored"/> (new tokens start at 0, evicted ones drop).</summary>
        private double[] Realign(int i, IReadOnlyList<int> stored)
        {
            var old = _positions[i] ?? [];
            var oldSums = _sums[i] ?? [];
            var sums = new double[stored.Count];
            for (int t = 0, j = 0; t < sums.Length; t++)
            {
                while (j < old.Length && old[j] < stored[t]) j++;
                if (j < old.Length && old[j] == stored[t]) sums[t] = oldSums[j];
            }
            _positions[i] = [.. stored];
            _sums[i] = sums;
            return sums;
        }

        public override void Dispose()
        {
            if (_collecting) Cache.EndStatistics();
            _collecting = false;
        }
    }
}
