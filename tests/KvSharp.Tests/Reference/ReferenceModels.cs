using System.Runtime.InteropServices;
using KvSharp.Formats;
using KvSharp.Models;

namespace KvSharp.Tests.Reference;

/// <summary>A named configuration of <see cref="ReferenceModels.RandomConfigs"/> (the name makes theory cases readable).</summary>
/// <param name="Name">Short unique name, e.g. "gqa4-halfsplit".</param>
/// <param name="Config">The architecture.</param>
public sealed record NamedConfig(string Name, ModelConfig Config)
{
    /// <inheritdoc />
    public override string ToString() => Name;
}

/// <summary>
/// Small random-weight models covering every architecture variant the engine supports, with the same
/// weights given to the oracle (as double) and to the engine (as a <see cref="ModelWeights"/> of native
/// tensors), so engine-vs-oracle tests can run on each variant.
/// </summary>
public static unsafe class ReferenceModels
{
    /// <summary>
    /// Small configurations, one per variant: GQA ratios 1, 2, 3, 4; attention biases (Qwen2); q/k norm (Qwen3,
    /// with heads*headDim != hidden); both RoPE styles; Llama-3 RoPE scaling (all three frequency bands hit);
    /// tied and untied output; odd sizes (hidden 48, ffn 80, vocab 61, 3 heads).
    /// </summary>
    public static IReadOnlyList<NamedConfig> RandomConfigs() =>
    [
        new("mha-interleaved-untied", Make("llama", hidden: 32, ffn: 64, layers: 2, heads: 4, kvHeads: 4, headDim: 8, vocab: 50,
            style: RopeStyle.Interleaved, tie: false)),
        new("gqa2-halfsplit-tied", Make("llama", hidden: 64, ffn: 96, layers: 2, heads: 4, kvHeads: 2, headDim: 16, vocab: 64,
            style: RopeStyle.HalfSplit, tie: true)),
        new("gqa4-interleaved-tied", Make("llama", hidden: 64, ffn: 128, layers: 2, heads: 8, kvHeads: 2, headDim: 8, vocab: 70,
            style: RopeStyle.Interleaved, tie: true)),
        new("gqa4-halfsplit-untied", Make("mistral", hidden: 64, ffn: 128, layers: 3, heads: 8, kvHeads: 2, headDim: 8, vocab: 70,
            style: RopeStyle.HalfSplit, tie: false, theta: 500000)),
        new("qwen2-bias-gqa2", Make("qwen2", hidden: 64, ffn: 112, layers: 2, heads: 4, kvHeads: 2, headDim: 16, vocab: 80,
            style: RopeStyle.HalfSplit, tie: true, theta: 1000000, eps: 1e-6f) with { AttentionBias = true }),
        new("qwen3-qknorm-gqa4", Make("qwen3", hidden: 48, ffn: 96, layers: 2, heads: 4, kvHeads: 1, headDim: 16, vocab: 66,
            style: RopeStyle.HalfSplit, tie: true, theta: 1000000, eps: 1e-6f) with { QkNorm = true }),
        new("llama3-scaled-gqa2", Make("llama", hidden: 64, ffn: 96, layers: 2, heads: 4, kvHeads: 2, headDim: 16, vocab: 72,
            style: RopeStyle.HalfSplit, tie: false, theta: 10000) with
        {
            // With theta 1e4, d 16: wavelengths 6.3 .. ~2e4, so original 32 / (low 1, high 4) puts some
            // frequencies in each of the three bands (kept, interpolated, divided by the factor).
            RopeScaling = new Llama3RopeScaling(Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositions: 32),
        }),
        new("odd-48-80-gqa3", Make("llama", hidden: 48, ffn: 80, layers: 2, heads: 3, kvHeads: 1, headDim: 16, vocab: 61,
            style: RopeStyle.Interleaved, tie: false, eps: 1e-6f)),
        new("everything-qwen", Make("qwen2", hidden: 40, ffn: 72, layers: 2, heads: 6, kvHeads: 3, headDim: 10, vocab: 53,
            style: RopeStyle.Interleaved, tie: false) with
        {
            AttentionBias = true,
            QkNorm = true,
            RopeScaling = new Llama3RopeScaling(Factor: 4, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositions: 64),
        }),
    ];

    /// <summary>The configuration named <paramref name="name"/> in <see cref="RandomConfigs"/>.</summary>
    public static ModelConfig RandomConfig(string name) =>
        RandomConfigs().FirstOrDefault(c => c.Name == name)?.Config ?? throw new ArgumentException($"no random config named '{name}'", nameof(name));

    /// <summary>The names of <see cref="RandomConfigs"/> as xunit MemberData rows: <c>[MemberData(nameof(ReferenceModels.RandomConfigNames), MemberType = typeof(ReferenceModels))]</c>.</summary>
    public static IEnumerable<object[]> RandomConfigNames() => RandomConfigs().Select(c => new object[] { c.Name });

    /// <summary>
    /// Deterministic random weights for <paramref name="config"/> (the same for the same seed on any machine and
    /// runtime: SplitMix64 seeded per tensor from the seed and the tensor's name). Linear layers are stored in
    /// <paramref name="linearType"/> (F32, F16, BF16, Q8_0 or Q4_0 — the quantized ones need every linear input
    /// width and the hidden size to be multiples of 32; norms and biases always F32). The oracle sees exactly the
    /// stored values widened to double, computed here from the encoding, not by the engine's dequantizer.
    /// </summary>
    public static RandomModel CreateRandom(ModelConfig config, int seed = 1, GgmlType linearType = GgmlType.F32)
    {
        if (linearType is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q4_0))
            throw new ArgumentException($"random weights support F32, F16, BF16, Q8_0 and Q4_0, not {linearType}", nameof(linearType));
        config.Validate("random:" + config.Architecture);
        int d = config.HiddenSize, f = config.IntermediateSize, hd = config.HeadDim;
        int qDim = config.NumHeads * hd, kvDim = config.NumKvHeads * hd;
        var specs = new List<(string Name, long[] Shape, Kind Kind)>
        {
            (TensorNames.TokenEmbedding, [config.VocabSize, d], Kind.Embedding),
            (TensorNames.OutputNorm, [d], Kind.Norm),
        };
        if (!config.TieEmbeddings) specs.Add((TensorNames.Output, [config.VocabSize, d], Kind.Linear));
        for (int l = 0; l < config.NumLayers; l++)
        {
            string L(string s) => TensorNames.Layer(l, s);
            specs.Add((L(TensorNames.Suffix.AttnNorm), [d], Kind.Norm));
            specs.Add((L(TensorNames.Suffix.Q), [qDim, d], Kind.Linear));
            specs.Add((L(TensorNames.Suffix.K), [kvDim, d], Kind.Linear));
            specs.Add((L(TensorNames.Suffix.V), [kvDim, d], Kind.Linear));
            if (config.AttentionBias)
            {
                specs.Add((L(TensorNames.Suffix.QBias), [qDim], Kind.Bias));
                specs.Add((L(TensorNames.Suffix.KBias), [kvDim], Kind.Bias));
                specs.Add((L(TensorNames.Suffix.VBias), [kvDim], Kind.Bias));
            }
            if (config.QkNorm)
            {
                specs.Add((L(TensorNames.Suffix.QNorm), [hd], Kind.Norm));
                specs.Add((L(TensorNames.Suffix.KNorm), [hd], Kind.Norm));
            }
            specs.Add((L(TensorNames.Suffix.AttnOutput), [d, qDim], Kind.Linear));
            specs.Add((L(TensorNames.Suffix.FfnNorm), [d], Kind.Norm));
            specs.Add((L(TensorNames.Suffix.FfnGate), [f, d], Kind.Linear));
            specs.Add((L(TensorNames.Suffix.FfnUp), [f, d], Kind.Linear));
            specs.Add((L(TensorNames.Suffix.FfnDown), [d, f], Kind.Linear));
        }

        var memory = new NativeBuffers();
        var views = new Dictionary<string, TensorView>(StringComparer.Ordinal);
        var doubles = new Dictionary<string, double[]>(StringComparer.Ordinal);
        foreach (var (name, shape, kind) in specs)
        {
            long n = shape.Aggregate(1L, (a, b) => a * b);
            var rng = new SplitMix64(unchecked((ulong)seed * 0x9E3779B97F4A7C15UL ^ Fnv1a(name)));
            // Scales keep activations O(1): linear rows ~ U(-a, a) with a = sqrt(3 / in) have unit gain, so
            // attention scores are O(1) (neither uniform nor one-hot) and logits stay in a realistic range.
            double a = kind switch
            {
                Kind.Linear => Math.Sqrt(3.0 / shape[^1]),
                Kind.Embedding => 1.0,
                Kind.Bias => 0.5,
                _ => 0.5, // norms: 1 +- 0.5
            };
            var type = kind is Kind.Linear or Kind.Embedding ? linearType : GgmlType.F32;
            if (shape[^1] % GgmlTypeInfo.BlockSize(type) != 0)
                throw new ArgumentException($"{name}: rows of {shape[^1]} cannot be stored as {type} (blocks of {GgmlTypeInfo.BlockSize(type)})", nameof(linearType));
            var raw = new float[n];
            for (long i = 0; i < n; i++) raw[i] = (float)((rng.NextDouble() * 2 - 1) * a + (kind == Kind.Norm ? 1.0 : 0.0));
            long bytes = n / GgmlTypeInfo.BlockSize(type) * GgmlTypeInfo.BlockBytes(type);
            byte* p = memory.Allocate(bytes);
            var values = Encode(type, raw, p);
            views[name] = new TensorView(name, type, shape, p, bytes);
            doubles[name] = values;
        }
        var weights = new ModelWeights(config, $"random:seed={seed}", views, memory);
        return new RandomModel(config, weights, doubles);
    }

    /// <summary>Deterministic random token ids in [0, vocab).</summary>
    public static int[] RandomTokens(int count, int vocab, int seed = 7)
    {
        var rng = new SplitMix64((ulong)seed);
        return Enumerable.Range(0, count).Select(_ => (int)(rng.Next() % (ulong)vocab)).ToArray();
    }

    /// <summary>Stores <paramref name="x"/> at <paramref name="p"/> in <paramref name="type"/>; returns the stored values exactly.</summary>
    private static unsafe double[] Encode(GgmlType type, float[] x, byte* p)
    {
        var stored = new double[x.Length];
        switch (type)
        {
            case GgmlType.F32:
                for (int i = 0; i < x.Length; i++) { ((float*)p)[i] = x[i]; stored[i] = x[i]; }
                break;
            case GgmlType.F16:
                for (int i = 0; i < x.Length; i++) { var h = (Half)x[i]; ((Half*)p)[i] = h; stored[i] = (float)h; }
                break;
            case GgmlType.BF16:
                // Truncation to the top 16 bits (any rounding is fine: the stored value is what both sides see).
                for (int i = 0; i < x.Length; i++)
                {
                    ushort b = (ushort)(BitConverter.SingleToUInt32Bits(x[i]) >> 16);
                    ((ushort*)p)[i] = b;
                    stored[i] = BitConverter.UInt32BitsToSingle((uint)b << 16);
                }
                break;
            case GgmlType.Q8_0:
                // Block of 32: f16 scale d = max|x| / 127, then 32 int8 q = round(x / d); value = d * q.
                for (int blk = 0; blk < x.Length / 32; blk++)
                {
                    byte* bp = p + blk * 34;
                    float amax = 0;
                    for (int i = 0; i < 32; i++) amax = Math.Max(amax, Math.Abs(x[blk * 32 + i]));
                    var d = (Half)(amax / 127);
                    *(Half*)bp = d;
                    double dd = (float)d;
                    for (int i = 0; i < 32; i++)
                    {
                        int q = dd == 0 ? 0 : Math.Clamp((int)Math.Round(x[blk * 32 + i] / dd), -127, 127);
                        ((sbyte*)(bp + 2))[i] = (sbyte)q;
                        stored[blk * 32 + i] = dd * q;
                    }
                }
                break;
            case GgmlType.Q4_0:
                // Block of 32: f16 scale d = (signed value of largest magnitude) / -8, then 4-bit q in 0..15 with
                // value = d * (q - 8); byte i holds element i in its low nibble and element i + 16 in its high nibble.
                for (int blk = 0; blk < x.Length / 32; blk++)
                {
                    byte* bp = p + blk * 18;
                    float max = 0;
                    for (int i = 0; i < 32; i++) if (Math.Abs(x[blk * 32 + i]) > Math.Abs(max)) max = x[blk * 32 + i];
                    var d = (Half)(max / -8);
                    *(Half*)bp = d;
                    double dd = (float)d;
                    var q = new int[32];
                    for (int i = 0; i < 32; i++)
                    {
                        q[i] = dd == 0 ? 8 : Math.Clamp((int)Math.Round(x[blk * 32 + i] / dd) + 8, 0, 15);
                        stored[blk * 32 + i] = dd * (q[i] - 8);
                    }
                    for (int i = 0; i < 16; i++) bp[2 + i] = (byte)(q[i] | (q[i + 16] << 4));
                }
                break;
            default:
                throw new ArgumentException($"cannot store {type}");
        }
        return stored;
    }

    private static ModelConfig Make(string arch, int hidden, int ffn, int layers, int heads, int kvHeads, int headDim, int vocab,
        RopeStyle style, bool tie, double theta = 10000, float eps = 1e-5f) => new()
        {
            Architecture = arch,
            VocabSize = vocab,
            HiddenSize = hidden,
            IntermediateSize = ffn,
            NumLayers = layers,
            NumHeads = heads,
            NumKvHeads = kvHeads,
            HeadDim = headDim,
            RmsNormEps = eps,
            RopeTheta = theta,
            RopeStyle = style,
            MaxContext = 256,
            TieEmbeddings = tie,
            BosTokenId = 1,
            EosTokenIds = [2],
        };

    private static ulong Fnv1a(string s)
    {
        ulong h = 14695981039346656037UL;
        foreach (char c in s) { h ^= c; h *= 1099511628211UL; }
        return h;
    }

    private enum Kind { Linear, Embedding, Norm, Bias }

    /// <summary>SplitMix64: tiny, fully specified, so the weights never change with the runtime's Random.</summary>
    private sealed class SplitMix64(ulong state)
    {
        private ulong _state = state;

        public ulong Next()
        {
            ulong z = _state += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }

        /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
        public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));
    }

    /// <summary>Owns the native allocations behind the random tensors (64-byte aligned, freed on dispose).</summary>
    private sealed unsafe class NativeBuffers : IDisposable
    {
        private readonly List<nint> _blocks = new();

        public byte* Allocate(long bytes)
        {
            var p = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 1), 64);
            _blocks.Add((nint)p);
            return p;
        }

        public void Dispose()
        {
            foreach (var p in _blocks) NativeMemory.AlignedFree((void*)p);
            _blocks.Clear();
        }
    }
}

/// <summary>
/// One random model: the engine's view (<see cref="Weights"/>, native F32/F16/BF16 tensors under canonical names)
/// and the oracle's (<see cref="Tensors"/> as double, <see cref="Reference"/>). Dispose frees the native memory.
/// </summary>
public sealed class RandomModel : IDisposable
{
    internal RandomModel(ModelConfig config, ModelWeights weights, IReadOnlyDictionary<string, double[]> tensors)
    {
        Config = config;
        Weights = weights;
        Tensors = tensors;
        Reference = new ReferenceTransformer(config, ReferenceWeights.FromDictionary(tensors));
    }

    /// <summary>The architecture.</summary>
    public ModelConfig Config { get; }

    /// <summary>The weights for the engine (valid until <see cref="Dispose"/>).</summary>
    public ModelWeights Weights { get; }

    /// <summary>The same weights as double, by canonical name.</summary>
    public IReadOnlyDictionary<string, double[]> Tensors { get; }

    /// <summary>The oracle over these weights.</summary>
    public ReferenceTransformer Reference { get; }

    /// <inheritdoc />
    public void Dispose() => Weights.Dispose();
}
