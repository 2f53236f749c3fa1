namespace KvSharp.Generation.Sampling;

/// <summary>
/// Chooses the next token from a row of logits with the stages of <see cref="SamplerOptions"/>, in
/// llama.cpp's default order: repetition penalty → top-k → top-p → min-p → temperature → draw.
/// Deterministic for a seed (its own xoshiro256** generator). Sized for 150K-token vocabularies: top-k
/// uses a k-element heap instead of sorting the vocabulary, and top-p without top-k buckets the logits and
/// sorts only the bucket where the cumulative mass crosses p. The draw walks the surviving tokens in id order (whatever
/// order the stages left them in), so a sampler that finds the survivors without sorting them — the CUDA backend's
/// <c>CudaSampler</c> — draws the same token from the same random number. Buffers are reused between calls; one instance
/// is not thread-safe.
/// </summary>
public sealed class Sampler
{
    // Logit buckets of top-p over the whole vocabulary: enough that the crossing bucket holds few tokens.
    private const int TopPBuckets = 4096;

    private readonly Xoshiro256StarStar _rng;
    private readonly HashSet<int> _penalized = [];
    private float[] _work = [];     // logits after the repetition penalty, indexed by token id
    private int[] _ids = [];        // surviving candidates
    private float[] _vals = [];     // their logits, parallel to _ids
    private double[] _probs = [];   // unnormalized probabilities for the draw
    private ushort[] _bucketOf = [];   // top-p bucket of each token
    private readonly double[] _bucketMass = new double[TopPBuckets];
    private readonly int[] _bucketCount = new int[TopPBuckets];
    private readonly int[] _bucketStart = new int[TopPBuckets];
    private readonly Comparer<int> _byLogitDescending;
    private int[] _heapIds = [];
    private float[] _heapVals = [];
    private int _count;             // number of surviving candidates
    private bool _sorted;           // whether _ids[0.._count] is sorted by logit descending (ties: lower id first)
    private bool _idOrder;          // whether _ids[0.._count] is in ascending id order

    /// <summary>Creates a sampler; throws <see cref="KvSharpException"/> when an option is out of range.</summary>
    public Sampler(SamplerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        Options = options;
        _rng = new Xoshiro256StarStar(options.Seed);
        // Reads _work at comparison time, so one comparer serves every call.
        _byLogitDescending = Comparer<int>.Create((a, b) => _work[a] != _work[b] ? _work[b].CompareTo(_work[a]) : a.CompareTo(b));
    }

    /// <summary>The options this sampler applies.</summary>
    public SamplerOptions Options { get; }

    /// <summary>Restarts the random sequence from <paramref name="seed"/>.</summary>
    public void Reseed(ulong seed) => _rng.Reseed(seed);

    /// <summary>
    /// Picks the next token id from <paramref name="logits"/> (one value per vocabulary entry).
    /// <paramref name="recentTokens"/> is the token history (prompt and generated, oldest first); only its last
    /// <see cref="SamplerOptions.RepeatLastN"/> entries are penalized. Greedy options return the first maximum.
    /// </summary>
    public int Sample(ReadOnlySpan<float> logits, ReadOnlySpan<int> recentTokens)
    {
        if (Options.IsGreedy && !PenaltyApplies(recentTokens))
        {
            if (logits.Length == 0) throw new ArgumentException("The logits are empty.", nameof(logits));
            return ArgMax(logits); // nothing to change: skip copying the row
        }
        var work = Penalize(logits, recentTokens);
        if (Options.IsGreedy) return ArgMax(work);
        Filter(work);
        return Draw();
    }

    /// <summary>Test hook: the logits after the repetition penalty.</summary>
    internal float[] PenalizedLogits(ReadOnlySpan<float> logits, ReadOnlySpan<int> recentTokens) =>
        Penalize(logits, recentTokens).ToArray();

    /// <summary>Test hook: the ids that survive penalty, top-k, top-p and min-p, in candidate order.</summary>
    internal int[] Candidates(ReadOnlySpan<float> logits, ReadOnlySpan<int> recentTokens)
    {
        Filter(Penalize(logits, recentTokens));
        return _ids.AsSpan(0, _count).ToArray();
    }

    private ReadOnlySpan<float> Penalize(ReadOnlySpan<float> logits, ReadOnlySpan<int> recentTokens)
    {
        int n = logits.Length;
        if (n == 0) throw new ArgumentException("The logits are empty.", nameof(logits));
        EnsureCapacity(n);
        var work = _work.AsSpan(0, n);
        logits.CopyTo(work);

        if (!PenaltyApplies(recentTokens)) return work;
        float penalty = Options.RepetitionPenalty;
        int lastN = PenaltyWindow(recentTokens);

        // Once per distinct token however often it occurs, as llama.cpp's repeat penalty does.
        _penalized.Clear();
        foreach (int id in recentTokens[^lastN..])
        {
            if ((uint)id >= (uint)n)
                throw new ArgumentOutOfRangeException(nameof(recentTokens), id, $"Token id outside the vocabulary of {n}.");
            if (!_penalized.Add(id)) continue;
            ref float l = ref work[id];
            l = l <= 0 ? l * penalty : l / penalty;
        }
        return work;
    }

    private int PenaltyWindow(ReadOnlySpan<int> recentTokens) =>
        Options.RepeatLastN < 0 ? recentTokens.Length : Math.Min(Options.RepeatLastN, recentTokens.Length);

    private bool PenaltyApplies(ReadOnlySpan<int> recentTokens) => Options.RepetitionPenalty != 1f && PenaltyWindow(recentTokens) > 0;

    private static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        float bestValue = values[0];
        for (int i = 1; i < values.Length; i++)
        {
            // Strictly greater keeps the first (lowest id) of equal maxima.
            if (values[i] > bestValue) { bestValue = values[i]; best = i; }
        }
        return best;
    }

    private void Filter(ReadOnlySpan<float> work)
    {
        int n = work.Length;
        int topK = Options.TopK;
        if (topK > 0 && topK < n)
        {
            SelectTop(work, topK);
            _idOrder = false;
        }
        else
        {
            for (int i = 0; i < n; i++) { _ids[i] = i; _vals[i] = work[i]; }
            _count = n;
            _sorted = false;
            _idOrder = true;
        }
        if (Options.TopP < 1f) ApplyTopP(work);
        if (Options.MinP > 0f) ApplyMinP();
    }

    /// <summary>Keeps the smallest prefix of the best tokens whose softmax (temperature 1) mass reaches p.</summary>
    private void ApplyTopP(ReadOnlySpan<float> work)
    {
        if (!_sorted)
        {
            ApplyTopPByBuckets(work);
            return;
        }
        double p = Options.TopP;
        float max = _vals[0];
        double sum = 0;
        for (int j = 0; j < _count; j++) sum += Math.Exp(_vals[j] - max);
        double target = p * sum, cumulative = 0;
        for (int j = 0; j < _count; j++)
        {
            cumulative += Math.Exp(_vals[j] - max);
            if (cumulative >= target) { _count = j + 1; return; }
        }
        // Rounding kept p just out of reach: keep all.
    }

    /// <summary>
    /// Top-p over the whole (unsorted) vocabulary in O(n): tokens are bucketed by logit, buckets (best first) are
    /// accumulated up to the one where the mass crosses p, and only that bucket is sorted to find the exact cut.
    /// Every token of an earlier bucket has a higher logit than every token of the crossing bucket, so the kept set
    /// is exactly the sorted prefix; it is left in bucket order (best buckets first), with the crossing bucket sorted.
    /// </summary>
    private void ApplyTopPByBuckets(ReadOnlySpan<float> work)
    {
        int n = work.Length;
        float max = float.NegativeInfinity, min = float.PositiveInfinity;
        foreach (float v in work)
        {
            if (v > max) max = v;
            if (v < min && v != float.NegativeInfinity) min = v;
        }
        if (max == float.NegativeInfinity) return; // nothing has any probability: leave all candidates

        var mass = _bucketMass;
        var count = _bucketCount;
        Array.Clear(mass);
        Array.Clear(count);
        double scale = max > min ? (TopPBuckets - 1) / ((double)max - min) : 0;
        double sum = 0;
        for (int i = 0; i < n; i++)
        {
            float v = work[i];
            int b = v == float.NegativeInfinity ? TopPBuckets - 1 : Math.Min(TopPBuckets - 1, (int)((max - (double)v) * scale));
            double e = Math.Exp(v - max);
            _bucketOf[i] = (ushort)b;
            mass[b] += e;
            count[b]++;
            sum += e;
        }

        double target = Options.TopP * sum, cumulative = 0;
        int cross = -1;
        for (int b = 0; b < TopPBuckets; b++)
        {
            if (count[b] == 0) continue;
            if (cumulative + mass[b] >= target) { cross = b; break; }
            cumulative += mass[b];
        }
        if (cross < 0) return; // rounding kept p just out of reach: keep all

        // Counting-sort the tokens of the buckets up to the crossing one into the candidate list.
        var start = _bucketStart;
        int position = 0;
        for (int b = 0; b <= cross; b++) { start[b] = position; position += count[b]; }
        int crossStart = start[cross], crossEnd = position;
        for (int i = 0; i < n; i++)
        {
            int b = _bucketOf[i];
            if (b <= cross) _ids[start[b]++] = i;
        }

        Array.Sort(_ids, crossStart, crossEnd - crossStart, _byLogitDescending);
        _count = crossEnd;
        for (int j = crossStart; j < crossEnd; j++)
        {
            cumulative += Math.Exp(work[_ids[j]] - max);
            if (cumulative >= target) { _count = j + 1; break; }
        }
        for (int j = 0; j < _count; j++) _vals[j] = work[_ids[j]];
        _sorted = false;
        _idOrder = false;
    }

    /// <summary>Drops candidates whose probability is below MinP times the best one (compared in log space).</summary>
    private void ApplyMinP()
    {
        float max = float.NegativeInfinity;
        for (int j = 0; j < _count; j++) max = Math.Max(max, _vals[j]);
        float threshold = max + MathF.Log(Options.MinP);
        int kept = 0;
        for (int j = 0; j < _count; j++)
        {
            if (_vals[j] < threshold) continue;
            _ids[kept] = _ids[j];
            _vals[kept] = _vals[j];
            kept++;
        }
        _count = kept; // order is preserved, so sortedness is too
    }

    private int Draw()
    {
        // Id order makes the drawn token independent of how the stages ordered the survivors (top-k: by rank; top-p
        // over the vocabulary: by bucket); a stable, cheap order the device sampler reproduces.
        if (!_idOrder) Array.Sort(_ids, _vals, 0, _count);
        float inverseTemperature = 1f / Options.Temperature;
        float max = float.NegativeInfinity;
        for (int j = 0; j < _count; j++) max = Math.Max(max, _vals[j]);
        double sum = 0;
        for (int j = 0; j < _count; j++)
        {
            double e = Math.Exp(((double)_vals[j] - max) * inverseTemperature);
            _probs[j] = e;
            sum += e;
        }
        if (!(sum > 0) || !double.IsFinite(sum)) return _ids[0]; // all -inf or NaN logits: nothing to draw from

        double u = _rng.NextDouble() * sum;
        double cumulative = 0;
        int last = 0;
        for (int j = 0; j < _count; j++)
        {
            if (_probs[j] <= 0) continue;
            cumulative += _probs[j];
            last = j;
            if (u < cumulative) return _ids[j];
        }
        return _ids[last]; // u landed past the end through rounding
    }

    /// <summary>
    /// Writes the <paramref name="k"/> best tokens of the whole vocabulary into the candidate buffers, sorted by logit
    /// descending and lower id first on ties, using a k-element min-heap (O(n log k), no full sort for small k).
    /// </summary>
    private void SelectTop(ReadOnlySpan<float> work, int k)
    {
        int n = work.Length;
        k = Math.Min(k, n);
        if (_heapIds.Length < k) { _heapIds = new int[k]; _heapVals = new float[k]; }
        var hIds = _heapIds;
        var hVals = _heapVals;

        // The root is the worst kept token: the lowest logit, and the highest id among equal logits.
        for (int i = 0; i < k; i++)
        {
            int c = i;
            float v = work[i];
            while (c > 0)
            {
                int parent = (c - 1) >> 1;
                if (!Worse(v, i, hVals[parent], hIds[parent])) break;
                hVals[c] = hVals[parent]; hIds[c] = hIds[parent];
                c = parent;
            }
            hVals[c] = v; hIds[c] = i;
        }
        for (int i = k; i < n; i++)
        {
            float v = work[i];
            // Ids rise with i, so an equal logit is never better than the root: strict comparison suffices.
            if (!(v > hVals[0])) continue;
            SiftDown(hVals, hIds, k, v, i);
        }

        // Pop the heap from the worst to the best, filling the result back to front.
        for (int size = k; size > 0; size--)
        {
            _ids[size - 1] = hIds[0];
            _vals[size - 1] = hVals[0];
            if (size > 1) SiftDown(hVals, hIds, size - 1, hVals[size - 1], hIds[size - 1]);
        }
        _count = k;
        _sorted = true;
    }

    private static void SiftDown(float[] hVals, int[] hIds, int size, float v, int id)
    {
        int c = 0;
        while (true)
        {
            int child = 2 * c + 1;
            if (child >= size) break;
            if (child + 1 < size && Worse(hVals[child + 1], hIds[child + 1], hVals[child], hIds[child])) child++;
            if (!Worse(hVals[child], hIds[child], v, id)) break;
            hVals[c] = hVals[child]; hIds[c] = hIds[child];
            c = child;
        }
        hVals[c] = v; hIds[c] = id;
    }

    private static bool Worse(float va, int ia, float vb, int ib) => va < vb || (va == vb && ia > ib);

    private void EnsureCapacity(int n)
    {
        if (_work.Length >= n) return;
        _work = new float[n];
        _ids = new int[n];
        _vals = new float[n];
        _probs = new double[n];
        _bucketOf = new ushort[n];
    }
}
