using System.Globalization;
using System.Numerics.Tensors;
using KvSharp.Cache;

namespace KvSharp.Compression.Scorers;

/// <summary>
/// R-KV (redundancy-aware): score = <see cref="Lambda"/> · importance − (1 − <see cref="Lambda"/>) · redundancy.
/// Importance: the attention of the last <see cref="Window"/> queries, summed over them and averaged over the group,
/// max-pooled along the tokens (kernel <see cref="Kernel"/>). Redundancy, per head: with c_ij the cosine similarity of
/// stored keys i and j, token j's raw redundancy is the mean over the other stored tokens i of c_ij where c_ij &gt;
/// <see cref="Threshold"/> and i is later than j (of a similar pair the most recent is protected: only the older one is
/// redundant), else 0; the raw values are softmaxed over the head's tokens. The window is kept.
/// </summary>
public sealed class RkvScorer : IScorer
{
    /// <summary>Creates the scorer.</summary>
    /// <exception cref="KvSharpException">A parameter is out of range.</exception>
    public RkvScorer(int window = 8, int kernel = 7, double lambda = 0.07, double threshold = 0.5)
    {
        if (window < 1) throw new KvSharpException($"rkv: window must be ≥ 1, got {window}");
        if (kernel < 1 || kernel % 2 == 0) throw new KvSharpException($"rkv: kernel must be odd and ≥ 1, got {kernel}");
        Window = window; Kernel = kernel; Lambda = lambda; Threshold = threshold;
    }

    /// <summary>Observed last queries (kept).</summary>
    public int Window { get; }

    /// <summary>Max-pooling kernel (odd).</summary>
    public int Kernel { get; }

    /// <summary>Weight of importance (redundancy gets 1 − λ).</summary>
    public double Lambda { get; }

    /// <summary>Cosine similarity above which two keys count as redundant.</summary>
    public double Threshold { get; }

    /// <inheritdoc />
    public string Text => string.Create(CultureInfo.InvariantCulture, $"rkv:window={Window},kernel={Kernel},lambda={Lambda:R},threshold={Threshold:R}");

    /// <inheritdoc />
    public HeadScores Score(PressContext context)
    {
        var scores = ObservationWindow.Observe(context, Window, GroupFold.Mean, (s, l, h) => s.SumProbability(l, h).ToArray());
        int d = context.Cache.HeadDim;
        for (int l = 0; l < context.Layers; l++)
            for (int h = 0; h < context.KvHeads; h++)
            {
                var s = scores[l, h];
                SnapKvScorer.Pool1D(s, Kernel, max: true);
                Rescore(s, context.Cache.ReadKeys(l, h), d);
            }
        return scores;
    }

    /// <summary>
    /// Turns one head's max-pooled importance (the window +∞) into R-KV's score in place: λ · importance − (1 − λ) ·
    /// redundancy of its stored <paramref name="keys"/> ([n, <paramref name="d"/>], ascending position).
    /// </summary>
    internal void Rescore(float[] importance, float[] keys, int d) => RescoreWithRaw(importance, RawRedundancy(keys, d, Threshold));

    /// <summary>
    /// <see cref="Rescore"/> from the head's raw redundancy (<see cref="RawRedundancy"/>'s values, before the softmax).
    /// Shared with the CUDA backend, which pools the importance and sums the raw redundancy on the device.
    /// </summary>
    internal void RescoreWithRaw(float[] importance, float[] raw)
    {
        var redundancy = SoftMaxed(raw);
        for (int i = 0; i < importance.Length; i++)
            if (float.IsFinite(importance[i])) importance[i] = (float)(Lambda * importance[i] - (1 - Lambda) * redundancy[i]);
    }

    /// <summary>The softmaxed redundancy of each of the [n, d] keys (see the class remarks).</summary>
    public static float[] Redundancy(float[] keys, int d, double threshold) => SoftMaxed(RawRedundancy(keys, d, threshold));

    /// <summary>
    /// Each of the [n, d] keys' raw redundancy before the softmax: the sum of its cosine similarities above
    /// <paramref name="threshold"/> with the later keys, over n − 1.
    /// </summary>
    internal static float[] RawRedundancy(float[] keys, int d, double threshold)
    {
        int n = keys.Length / d;
        var unit = new float[keys.Length];
        for (int i = 0; i < n; i++)
        {
            var k = keys.AsSpan(i * d, d);
            float norm = TensorPrimitives.Norm(k);
            if (norm > 0) TensorPrimitives.Divide(k, norm, unit.AsSpan(i * d, d));
        }
        var raw = new float[n];
        Compute.Cpu.CpuThreads.For(n, 16, (from, to) =>
        {
            for (int j = from; j < to; j++)
            {
                double sum = 0;
                for (int i = j + 1; i < n; i++)
                {
                    float c = TensorPrimitives.Dot(unit.AsSpan(i * d, d), unit.AsSpan(j * d, d));
                    if (c > threshold) sum += c;
                }
                raw[j] = n > 1 ? (float)(sum / (n - 1)) : 0;
            }
        });
        return raw;
    }

    /// <summary>Raw redundancy (<see cref="RawRedundancy"/>) softmaxed over a head's tokens.</summary>
    internal static float[] SoftMaxed(float[] raw)
    {
        var result = new float[raw.Length];
        if (raw.Length > 0) TensorPrimitives.SoftMax(raw, result);
        return result;
    }
}
