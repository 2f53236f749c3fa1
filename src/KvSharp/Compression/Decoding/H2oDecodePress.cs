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
        // The cache's own running sums where it keeps them (the device: no read-back a step), else the session's below.
        private IRunningAttentionSums? _onCache = cache.StartRunningSums();

        // Per head the positions the sums were last aligned to and their running sums (double, as the CPU has always summed),
        // with a spare pair the next alignment writes into: no allocation per step once a head's capacity is reached.
        private readonly HeadSums[] _heads = [.. Enumerable.Range(0, cache.Layers * cache.KvHeads).Select(_ => new HeadSums())];
        private bool _collecting;

        public override void BeforeStep(int step)
        {
            Cache.BeginStatistics(new AttentionStatisticsRequest(Cache.Length, GroupFold.Mean));
            _collecting = true;
        }

        public override void AfterStep(int step)
        {
            if (_onCache != null)
            {
                _onCache.EndStatisticsIntoSums();
                _collecting = false;
                base.AfterStep(step);
                return;
            }
            var stats = Cache.EndStatistics();
            _collecting = false;
            for (int l = 0; l < Cache.Layers; l++)
                for (int h = 0; h < Cache.KvHeads; h++)
                {
                    var stored = Cache.Positions(l, h);
                    var sums = _heads[l * Cache.KvHeads + h].Realign(stored);
                    // Covered positions are stored positions (both ascending): each adds its sum to its own token.
                    var covered = stats.Positions(l, h);
                    var add = stats.SumProbability(l, h);
                    for (int c = 0, t = 0; c < covered.Length; c++)
                    {
                        while (t < stored.Length && stored[t] < covered[c]) t++;
                        if (t < stored.Length && stored[t] == covered[c]) sums[t] += add[c];
                    }
                }
            base.AfterStep(step);
        }

        protected override long Cut()
        {
            if (_onCache == null) return base.Cut();
            var (evicted, scores) = _onCache.EvictBySums(Press.Tokens, Press.Protect, Cache.Length - ((H2oDecodePress)Press).Window);
            ScoredOnCache(scores);
            return evicted;
        }

        protected override HeadScores Score()
        {
            var scores = new HeadScores(Cache.Layers, Cache.KvHeads);
            int recent = Cache.Length - ((H2oDecodePress)Press).Window;
            for (int l = 0; l < Cache.Layers; l++)
                for (int h = 0; h < Cache.KvHeads; h++)
                {
                    var positions = Cache.Positions(l, h);
                    var sums = _heads[l * Cache.KvHeads + h].Realign(positions);
                    var s = new float[positions.Length];
                    for (int t = 0; t < s.Length; t++) s[t] = positions[t] >= recent ? float.PositiveInfinity : (float)sums[t];
                    scores[l, h] = s;
                }
            return scores;
        }

        public override void Dispose()
        {
            // A collection left open (the step threw) ends through the sums where the cache keeps them: nothing read back.
            // The sums stop even when ending it throws: kept, they make the device cache refuse re-quantization, restores
            // and the next session's sums.
            try
            {
                if (_collecting && _onCache != null) _onCache.EndStatisticsIntoSums();
                else if (_collecting) Cache.EndStatistics();
            }
            finally
            {
                _collecting = false;
                _onCache?.Stop();
                _onCache = null;
            }
        }
    }

    /// <summary>One head's running sums, by position.</summary>
    private sealed class HeadSums
    {
        private int[] _positions = [], _sparePositions = [];
        private double[] _sums = [], _spareSums = [];
        private int _count;

        /// <summary>The sums moved onto <paramref name="stored"/> (ascending): new tokens start at 0, evicted ones drop.</summary>
        public Span<double> Realign(ReadOnlySpan<int> stored)
        {
            if (_count <= stored.Length && stored[.._count].SequenceEqual(_positions.AsSpan(0, _count)))
            {
                // Nothing evicted since (a step appends, scoring reads): the new tokens start at 0 after the kept sums.
                if (_positions.Length < stored.Length)
                {
                    int grown = Math.Max(stored.Length, 2 * _positions.Length);
                    Array.Resize(ref _positions, grown);
                    Array.Resize(ref _sums, grown);
                }
                stored[_count..].CopyTo(_positions.AsSpan(_count));
                _sums.AsSpan(_count, stored.Length - _count).Clear();
                _count = stored.Length;
                return _sums.AsSpan(0, _count);
            }
            if (_sparePositions.Length < stored.Length)
            {
                int capacity = Math.Max(stored.Length, 2 * _sparePositions.Length);
                (_sparePositions, _spareSums) = (new int[capacity], new double[capacity]);
            }
            var oldPositions = _positions.AsSpan(0, _count);
            var oldSums = _sums.AsSpan(0, _count);
            var sums = _spareSums.AsSpan(0, stored.Length);
            for (int t = 0, j = 0; t < sums.Length; t++)
            {
                while (j < oldPositions.Length && oldPositions[j] < stored[t]) j++;
                sums[t] = j < oldPositions.Length && oldPositions[j] == stored[t] ? oldSums[j] : 0;
            }
            stored.CopyTo(_sparePositions);
            (_positions, _sparePositions) = (_sparePositions, _positions);
            (_sums, _spareSums) = (_spareSums, _sums);
            _count = stored.Length;
            return sums;
        }
    }
}
