using System.Globalization;

namespace KvSharp.Compression.Presses;

/// <summary>Which binary vector KVCrush sorts evicted tokens against.</summary>
public enum KvCrushAnchor
{
    /// <summary>All zeros.</summary>
    Zeros,
    /// <summary>All ones.</summary>
    Ones,
    /// <summary>Seeded random bits.</summary>
    Random,
    /// <summary>Bit g = 1 when at least half of the evicted tokens have bit g set.</summary>
    Mean,
    /// <summary>1, 0, 1, 0, ...</summary>
    Alternate,
}

/// <summary>
/// KVCrush: an importance press (<see cref="Inner"/>) keeps its top tokens; from the tokens it would evict, a separate
/// budget of <see cref="Representatives"/> × candidates per head keeps a cheap representative set. Each token of a
/// layer gets a binary vector over the layer's KV heads — bit g = its score in head g is above that head's median
/// candidate score (the statistics fold query heads, so KV heads are the finest heads available) — and the evicted
/// candidates are sorted by Hamming distance to the anchor vector (ties by position); representatives are taken at
/// uniform steps along that order.
/// </summary>
public sealed class KvCrushPress(ScoredPress inner, double representatives = 0.05, KvCrushAnchor anchor = KvCrushAnchor.Mean, int seed = 0) : IKvPress
{
    /// <summary>The importance press.</summary>
    public ScoredPress Inner { get; } = inner ?? throw new ArgumentNullException(nameof(inner));

    /// <summary>Extra tokens kept per head, as a share of its candidates.</summary>
    public double Representatives { get; } = representatives is >= 0 and <= 1 ? representatives
        : throw new KvSharpException($"kvcrush: reps must be in [0, 1], got {representatives}");

    /// <summary>The anchor.</summary>
    public KvCrushAnchor Anchor { get; } = anchor;

    /// <inheritdoc />
    public string Text => Inner.Text + string.Create(CultureInfo.InvariantCulture,
        $"+kvcrush:reps={Representatives:R},anchor={Anchor.ToString().ToLowerInvariant()}") + (Anchor == KvCrushAnchor.Random ? $",seed={seed}" : "");

    /// <inheritdoc />
    public void Compress(PressContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var masks = Inner.Select(context, out var scores);
        var positions = Enumerable.Range(0, scores.HeadCount).Select(i => context.Cache.Positions(i / context.KvHeads, i % context.KvHeads)).ToArray();
        var own = Enumerable.Range(0, context.Layers).Select(l => context.Cache.SharedLayerSource(l) < 0).ToArray();
        AddRepresentatives(masks, scores, positions, context.ProtectedPrefix, own);
        for (int l = 0; l < context.Layers; l++)
            if (own[l])
                for (int h = 0; h < context.KvHeads; h++) Inner.Action.Apply(context, l, h, masks[l * context.KvHeads + h]);
    }

    /// <summary>
    /// Adds to the inner press's keep flags <paramref name="keep"/> (per head [layer · KvHeads + KV head], over the head's
    /// <paramref name="positions"/>, ascending) each head's representatives of the tokens it would evict, chosen from the
    /// inner scores <paramref name="scores"/>; layers not <paramref name="ownLayers"/> (shared) are left alone. Shared with
    /// the CUDA backend, which scores and evicts on the device.
    /// </summary>
    internal void AddRepresentatives(bool[][] keep, HeadScores scores, IReadOnlyList<IReadOnlyList<int>> positions, int protectedPrefix, IReadOnlyList<bool> ownLayers)
    {
        int kvHeads = scores.KvHeads;
        for (int l = 0; l < scores.Layers; l++)
        {
            if (!ownLayers[l]) continue;
            var bits = LayerBits(scores, positions, protectedPrefix, l);
            for (int h = 0; h < kvHeads; h++)
            {
                var k = keep[l * kvHeads + h];
                var at = positions[l * kvHeads + h];
                var evicted = Enumerable.Range(0, k.Length).Where(i => !k[i]).ToList();
                int candidates = at.Count(p => p >= protectedPrefix);
                int extra = Math.Min(evicted.Count, (int)Math.Round(Representatives * candidates, MidpointRounding.AwayFromZero));
                if (extra > 0)
                {
                    var anchorBits = AnchorBits(evicted.Select(i => bits[at[i]]).ToList(), kvHeads, l * 7919 + h);
                    var order = evicted.OrderBy(i => Hamming(bits[at[i]], anchorBits)).ThenBy(i => at[i]).ToList();
                    for (int r = 0; r < extra; r++) k[order[(int)((long)r * order.Count / extra)]] = true;
                }
            }
        }
    }

    /// <summary>Per position stored in any head of the layer: bit g = score in head g above head g's median candidate score.</summary>
    private static Dictionary<int, bool[]> LayerBits(HeadScores scores, IReadOnlyList<IReadOnlyList<int>> positions, int protectedPrefix, int layer)
    {
        var bits = new Dictionary<int, bool[]>();
        for (int g = 0; g < scores.KvHeads; g++)
        {
            var at = positions[layer * scores.KvHeads + g];
            var s = scores[layer, g];
            var finite = s.Where((x, i) => at[i] >= protectedPrefix && float.IsFinite(x)).Order().ToArray();
            float median = finite.Length == 0 ? 0 : finite[finite.Length / 2];
            for (int i = 0; i < s.Length; i++)
            {
                if (!bits.TryGetValue(at[i], out var v)) bits[at[i]] = v = new bool[scores.KvHeads];
                v[g] = s[i] > median;
            }
        }
        return bits;
    }

    private bool[] AnchorBits(List<bool[]> evicted, int width, int salt)
    {
        var rng = new Random(unchecked(seed * 1_000_003 + salt) & int.MaxValue);
        return Enumerable.Range(0, width).Select(g => Anchor switch
        {
            KvCrushAnchor.Zeros => false,
            KvCrushAnchor.Ones => true,
            KvCrushAnchor.Random => rng.Next(2) == 1,
            KvCrushAnchor.Alternate => g % 2 == 0,
            _ => 2 * evicted.Count(v => v[g]) >= evicted.Count,
        }).ToArray();
    }

    private static int Hamming(bool[] a, bool[] b)
    {
        int d = 0;
        for (int i = 0; i < a.Length; i++) if (a[i] != b[i]) d++;
        return d;
    }
}
