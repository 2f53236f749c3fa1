using System.Text;
using KvSharp.Compute.Cpu;
using KvSharp.Formats;

namespace KvSharp.Models.Loading;

/// <summary>
/// Deterministic random weights for any <see cref="ModelConfig"/>, for speed and memory work on
/// real model shapes without their checkpoints. Matrices are ~N(0, 0.02) (a triangular
/// distribution of that standard deviation, cheap to draw); norm weights are 1 ± 0.02; biases
/// ~0.02. The bytes depend only on (config, type, seed): each fixed-size chunk of each tensor
/// has its own generator seeded from (seed, tensor name, chunk index), so any thread count
/// produces the same model.
/// </summary>
public static unsafe class DummyWeights
{
    /// <summary>Elements per independently seeded chunk (a multiple of every block size).</summary>
    internal const int ChunkElements = 16384;

    /// <summary>Thread limit for generation (null: all cores); tests use it to show the bytes do not depend on it.</summary>
    internal static int? MaxThreads { get; set; }

    /// <summary>Standard deviation of matrix entries (the usual initializer_range).</summary>
    public const float Std = 0.02f;

    /// <summary>
    /// Generates all tensors <paramref name="config"/> requires. 2-D tensors are stored as
    /// <paramref name="type"/> (F32, F16, BF16, Q8_0 or Q4_0); matrices whose rows are not a
    /// multiple of 32 fall back to F32 for quantized types (as llama.cpp's quantizer does, it
    /// leaves them unquantized); 1-D tensors (norms, biases) are F32 as in GGUF files.
    /// </summary>
    public static ModelWeights Create(ModelConfig config, GgmlType type, int seed)
    {
        if (type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q4_0))
            throw new KvSharpException($"dummy weights: type {type} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0)");
        config.Validate("dummy weights config");
        var memory = new NativeTensorMemory();
        try
        {
            var tensors = new Dictionary<string, TensorView>(StringComparer.Ordinal);
            foreach (var (name, shape) in WeightValidator.Expected(config))
            {
                bool isVector = shape.Length == 1;
                var t = isVector ? GgmlType.F32
                    : shape[^1] % GgmlTypeInfo.BlockSize(type) == 0 ? type : GgmlType.F32;
                Kind kind = !isVector ? Kind.Matrix : name.EndsWith(".bias", StringComparison.Ordinal) ? Kind.Bias : Kind.Norm;
                tensors[name] = Generate(memory, name, shape, t, kind, seed);
            }
            return new ModelWeights(config, $"dummy:{type}:seed={seed}", tensors, memory);
        }
        catch
        {
            memory.Dispose();
            throw;
        }
    }

    private enum Kind { Matrix, Norm, Bias }

    private static TensorView Generate(NativeTensorMemory memory, string name, long[] shape, GgmlType type, Kind kind, int seed)
    {
        long elements = shape.Aggregate(1L, (a, b) => a * b);
        long bytes = elements / GgmlTypeInfo.BlockSize(type) * GgmlTypeInfo.BlockBytes(type);
        byte* data = memory.Allocate(bytes);
        ulong tensorSeed = SplitMix(SplitMix((ulong)(uint)seed) ^ Fnv1a(name));
        long chunks = (elements + ChunkElements - 1) / ChunkElements;
        int blockBytes = GgmlTypeInfo.BlockBytes(type), blockSize = GgmlTypeInfo.BlockSize(type);
        var options = new ParallelOptions { MaxDegreeOfParallelism = MaxThreads ?? -1 };
        Parallel.For(0L, chunks, options, c =>
        {
            // Chunk c covers elements [c*ChunkElements, ...); ChunkElements is a multiple of the block size.
            ulong state = SplitMix(tensorSeed + (ulong)c * 0x9E3779B97F4A7C15UL);
            long start = c * ChunkElements;
            int count = (int)Math.Min(ChunkElements, elements - start);
            Span<float> values = stackalloc float[256];
            for (int off = 0; off < count; off += values.Length)
            {
                int n = Math.Min(values.Length, count - off);
                var v = values.Slice(0, n);
                Fill(v, ref state, kind);
                Quantize.Row(type, v, new Span<byte>(data + (start + off) / blockSize * blockBytes, n / blockSize * blockBytes));
            }
        });
        return new TensorView(name, type, shape, data, bytes);
    }

    private static void Fill(Span<float> v, ref ulong state, Kind kind)
    {
        // Sum of two uniforms in [0,1) minus 1: triangular on (-1, 1), variance 1/6.
        const float scale = Std * 2.449489743f; // Std / sqrt(1/6)
        const float toUnit = 1.0f / 4294967296.0f;
        float offset = kind == Kind.Norm ? 1.0f : 0.0f;
        for (int i = 0; i < v.Length; i++)
        {
            state = Next(state, out ulong r);
            float tri = ((uint)r * toUnit) + ((uint)(r >> 32) * toUnit) - 1.0f;
            v[i] = offset + scale * tri;
        }
    }

    private static ulong Next(ulong state, out ulong value)
    {
        state += 0x9E3779B97F4A7C15UL;
        value = Mix(state);
        return state;
    }

    private static ulong SplitMix(ulong x) => Mix(x + 0x9E3779B97F4A7C15UL);

    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    private static ulong Fnv1a(string s)
    {
        ulong h = 0xcbf29ce484222325UL;
        foreach (byte b in Encoding.UTF8.GetBytes(s)) { h ^= b; h *= 0x100000001b3UL; }
        return h;
    }
}
