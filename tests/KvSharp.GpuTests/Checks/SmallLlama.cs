using KvSharp.Cache.Paged;
using KvSharp.Compute.Cpu;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Formats;
using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// The small Llama-shaped model the press and cache checks run on both engines: 2 layers, 8 heads over 2 KV heads of
/// dimension 64 (a shape the device paged cache reads), random float32 weights (so the GPU keeps float32 and the two
/// engines differ only by rounding).
/// </summary>
public sealed class SmallLlama : IDisposable
{
    private readonly ModelWeights _weights;
    private readonly RandomData _rnd;

    /// <summary>The model with weights drawn from <paramref name="rnd"/>'s seed.</summary>
    public SmallLlama(RandomData rnd)
    {
        _rnd = rnd;
        Config = PagedChecks.Shape(8, 2, 64) with { NumLayers = 2, HiddenSize = 512, IntermediateSize = 768, RopeTheta = 10000, RopeStyle = RopeStyle.HalfSplit };
        _weights = DummyWeights.Create(Config, GgmlType.F32, rnd.Seed);
        Gpu = new CudaTransformer(CudaDevice.Shared, _weights, DeviceWeightType.F32);
        Cpu = new Transformer(_weights);
    }

    public ModelConfig Config { get; }

    public CudaTransformer Gpu { get; }

    public Transformer Cpu { get; }

    /// <summary><paramref name="count"/> random token ids.</summary>
    public int[] Tokens(int count) => Enumerable.Range(0, count).Select(_ => _rnd.Next(Config.VocabSize)).ToArray();

    /// <summary>A CPU paged cache of <paramref name="options"/> holding <paramref name="tokens"/> prefilled by the CPU engine.</summary>
    public PagedKvCache CpuPrefill(int[] tokens, PagedKvCacheOptions options)
    {
        var cache = new PagedKvCache(Config, options);
        Cpu.Forward(tokens, cache);
        return cache;
    }

    public void Dispose()
    {
        Gpu.Dispose();
        _weights.Dispose();
    }
}
