using System.Globalization;
using KvSharp.Cache;
using KvSharp.Compression.Scorers;

namespace KvSharp.Compression.Decoding;

/// <summary>
/// R-KV during decoding (its intended use: long reasoning outputs). The cache's statistics pass observes the
/// <see cref="Window"/> generated queries before each compression step; at the step, importance = the attention those
/// queries gave each stored token, summed over them and averaged over the GQA group, max-pooled along the stored
/// tokens (kernel <see cref="Kernel"/>); redundancy = <see cref="RkvScorer.Redundancy"/> of the stored keys (cosine
/// similarity above <see cref="Threshold"/> to later keys, softmaxed over the head); score = λ·importance −
/// (1 − λ)·redundancy. The window's own tokens (appended while observed) are kept, so each head keeps its best
/// Tokens − Window candidates plus the window.
/// </summary>
public sealed class RkvDecodePress : DecodePress
{
    /// <summary>Creates the press.</summary>
    /// <exception cref="KvSharpException">A value is out of range.</exception>
    public RkvDecodePress(int tokens = 1024, int every = 128, int window = 8, int kernel = 7, double lambda = 0.07, double threshold = 0.5, int protect = 1)
        : base("rkv", tokens, every, protect)
    {
        if (window < 1) throw new KvSharpException($"rkv (decode): window must be ≥ 1, got {window}");
        if (kernel < 1 || kernel % 2 == 0) throw new KvSharpException($"rkv (decode): kernel must be odd and ≥ 1, got {kernel}");
        Window = window; Kernel = kernel; Lambda = lambda; Threshold = threshold;
    }

    /// <summary>Generated queries observed before each compression step (their tokens are kept).</summary>
    public int Window { get; }

    /// <summary>Max-pooling kernel of the importance (odd).</summary>
    public int Kernel { get; }

    /// <summary>Weight of importance (redundancy gets 1 − λ).</summary>
    public double Lambda { get; }

    /// <summary>Cosine similarity above which two keys count as redundant.</summary>
    public double Threshold { get; }

    /// <inheritdoc />
    public override string Text => string.Create(CultureInfo.InvariantCulture,
        $"rkv:tokens={Tokens},every={Every},window={Window},kernel={Kernel},lambda={Lambda:R},threshold={Threshold:R},protect={Protect}");

    internal override DecodePressSession CreateSession(IDecodeCache cache) => new Session(this, cache);

    private sealed class Session(RkvDecodePress press, IDecodeCache cache) : DecodePressSession(press, cache)
    {
        private readonly RkvDecodePress _press = press;
        private ObservedAttention? _observed;
        private bool _collecting;

        public override void BeforeStep(int step)
        {
            int nextCompression = (step + _press.Every - 1) / _press.Every * _press.Every;
            if (!_collecting && nextCompression - step < _press.Window)
            {
                Cache.BeginStatistics(new AttentionStatisticsRequest(Cache.Length, GroupFold.Mean));
                _collecting = true;
            }
        }

        public override void AfterStep(int step)
        {
            if (step % _press.Every != 0) return;
            _observed = _collecting ? Cache.EndStatistics() : null;
            _collecting = false;
            base.AfterStep(step);
            _observed = null;
        }

        protected override HeadScores Score()
        {
            var scores = new HeadScores(Cache.Layers, Cache.KvHeads);
            var raw = Cache.RawRedundancy(_press.Threshold); // all heads at once: on the device, one kernel a layer
            for (int l = 0; l < Cache.Layers; l++)
                for (int h = 0; h < Cache.KvHeads; h++)
                {
                    var positions = Cache.Positions(l, h);
                    // Without an observation (a session that started right at a compression step) every token is
                    // equally important and redundancy alone decides.
                    var s = _observed is { } o ? Align(positions, o.Positions(l, h), o.SumProbability(l, h), float.PositiveInfinity) : new float[positions.Length];
                    SnapKvScorer.Pool1D(s, _press.Kernel, max: true);
                    var redundancy = RkvScorer.SoftMaxed(raw[l * Cache.KvHeads + h]);
                    for (int t = 0; t < s.Length; t++)
                        if (float.IsFinite(s[t])) s[t] = (float)(_press.Lambda * s[t] - (1 - _press.Lambda) * redundancy[t]);
                    scores[l, h] = s;
                }
            return scores;
        }

        public override void Dispose()
        {
            if (_collecting) Cache.EndStatistics();
            _collecting = false;
        }
    }
}
