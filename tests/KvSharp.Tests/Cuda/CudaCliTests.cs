using KvSharp.Cli.Commands;
using KvSharp.Cli.Engine;
using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Tests.Cuda;

/// <summary><c>kvsharp generate --device cuda</c>: one clear line without a GPU, the CPU engine's text with one.</summary>
public class CudaCliTests
{
    private static readonly string Stories = RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf");
    private static readonly string Needle = RepoPaths.SharedFile("models", "kvsharp-needle-16m");

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var context = new CliContext(new EngineFacade(error), new StringReader(""), output, error, CancellationToken.None);
        int code = KvSharpCommandLine.Run(args, context);
        return (code, output.ToString(), error.ToString());
    }

    [Fact]
    public void WithoutGpu_OneCudaUnavailableLine()
    {
        if (CudaDevice.IsAvailable) return; // the GPU case is GreedyTextEqualsCpu
        var r = Run("generate", "-m", Stories, "-p", "Once upon a time", "--device", "cuda");
        Assert.Equal(1, r.Code);
        Assert.StartsWith("kvsharp: CUDA unavailable: ", r.Err);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
        Assert.DoesNotContain("   at ", r.Err);
    }

    [Fact]
    public void UnknownDevice_IsAUsageError()
    {
        var r = Run("generate", "-m", Stories, "-p", "x", "--device", "tpu");
        Assert.NotEqual(0, r.Code);
        Assert.Contains("--device", r.Err);
        Assert.Contains("tpu", r.Err);
    }

    [Fact]
    public void ResidualWindows_AreRejectedOnCuda()
    {
        var residual = Run("generate", "-m", Stories, "-p", "x", "--device", "cuda", "--kv-cache", "int2+r64");
        Assert.Equal(2, residual.Code);
        Assert.Contains("Int2+r64", residual.Err);
        Assert.Contains("+r", residual.Err);
        Assert.Contains("--device cuda", residual.Err);
        Assert.DoesNotContain("   at ", residual.Err);
    }

    /// <summary>Cache files are no longer refused with --device cuda: without a GPU the run ends in the one CUDA line, not a usage error.</summary>
    [Fact]
    public void CacheFilesOnCuda_WithoutGpu_OneCudaUnavailableLine()
    {
        if (CudaDevice.IsAvailable) return; // the GPU case is SavedOnCpu_LoadedOnGpu_AndBack
        using var dir = new TempDir();
        string file = Path.Combine(dir.Path, "c.kvc");
        Assert.Equal(0, Run("generate", "-m", Needle, "-p", "Once upon a time", "-n", "4", "--temperature", "0", "--save-cache", file).Code);
        foreach (var args in new[] { new[] { "--save-cache", Path.Combine(dir.Path, "d.kvc") }, ["--load-cache", file] })
        {
            var r = Run([.. new[] { "generate", "-m", Needle, "-p", "x", "--device", "cuda" }, .. args]);
            Assert.Equal(1, r.Code);
            Assert.StartsWith("kvsharp: CUDA unavailable: ", r.Err);
            Assert.DoesNotContain("   at ", r.Err);
        }
    }

    /// <summary>
    /// A cache saved by the CPU engine continues on the GPU, and a cache the GPU saves continues on the CPU: float32 dummy
    /// weights of the needle model's shape with 4 query heads per KV head (bench/configs/needle-gqa4.json; the device paged
    /// cache reads groups of 1/2/4/8, the needle model has 3), so both engines give the same greedy text.
    /// </summary>
    [CudaFact]
    public void SavedOnCpu_LoadedOnGpu_AndBack()
    {
        using var dir = new TempDir();
        string cpuFile = Path.Combine(dir.Path, "cpu.kvc"), gpuFile = Path.Combine(dir.Path, "gpu.kvc");
        string[] model = ["--dummy", Path.Combine(RepoPaths.Root, "bench", "configs", "needle-gqa4.json"), "--dummy-type", "f32", "--temperature", "0", "-n", "8"];
        Assert.Equal(0, Run(["generate", .. model, "-p", "Once upon a time", "--kv-cache", "f16", "--save-cache", cpuFile]).Code);
        var onCpu = Run(["generate", .. model, "-p", " there", "--load-cache", cpuFile]);
        var onGpu = Run(["generate", .. model, "-p", " there", "--load-cache", cpuFile, "--device", "cuda", "--save-cache", gpuFile]);
        Assert.Equal(0, onGpu.Code);
        Assert.Equal(onCpu.Out, onGpu.Out);
        var back = Run(["generate", .. model, "-p", " and", "--load-cache", gpuFile]);
        Assert.Equal(0, back.Code);
        Assert.False(string.IsNullOrWhiteSpace(back.Out));
    }

    [Fact]
    public void PackedCacheOnCuda_WithoutGpu_OneCudaUnavailableLine()
    {
        if (CudaDevice.IsAvailable) return; // the GPU case is PackedCacheOnCuda_RefusesAShapeItDoesNotRead
        var r = Run("generate", "-m", Stories, "-p", "x", "--device", "cuda", "--kv-cache", "int4");
        Assert.Equal(1, r.Code);
        Assert.StartsWith("kvsharp: CUDA unavailable: ", r.Err);
    }

    /// <summary>stories260K's head dimension (8) is not one the device paged cache reads: one line naming the shape.</summary>
    [CudaFact]
    public void PackedCacheOnCuda_RefusesAShapeItDoesNotRead()
    {
        var r = Run("generate", "-m", Stories, "-p", "x", "--device", "cuda", "--kv-cache", "int4");
        Assert.Equal(1, r.Code);
        Assert.Contains("head dimension 64 or 128", r.Err);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
    }

    /// <summary>stories260K is float32: the GPU keeps float32 weights, so greedy text equals the CPU engine's.</summary>
    [CudaFact]
    public void GreedyTextEqualsCpu()
    {
        var cpu = Run("generate", "-m", Stories, "-p", "Once upon a time", "--temperature", "0", "-n", "40");
        var gpu = Run("generate", "-m", Stories, "-p", "Once upon a time", "--temperature", "0", "-n", "40", "--device", "cuda");
        Assert.Equal(0, gpu.Code);
        Assert.Equal(cpu.Out, gpu.Out);
    }

    [Theory]
    [InlineData("h2o:tokens=64")]
    [InlineData("rkv:tokens=64,every=16")]
    public void DecodePressesOnCuda_WithoutGpu_OneCudaUnavailableLine(string press)
    {
        if (CudaDevice.IsAvailable) return; // the GPU case is DecodePressesOnCuda_GreedyTextEqualsCpu
        var r = Run("generate", "-m", Stories, "-p", "x", "--device", "cuda", "--decode-press", press);
        Assert.Equal(1, r.Code);
        Assert.StartsWith("kvsharp: CUDA unavailable: ", r.Err);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
    }

    /// <summary>
    /// A decode press compressing while the GPU generates gives the CPU engine's sampled text (the device sampler draws the CPU's
    /// random sequence; dummy weights' greedy text repeats one token whatever the cache holds): float32 dummy weights of the
    /// needle model's shape with 4 query heads per KV head (as <see cref="SavedOnCpu_LoadedOnGpu_AndBack"/>), budgets small
    /// enough that every run compresses many times (the kept tokens per head are compared in the GPU check
    /// "press: decode-time H2O / R-KV on the device = the CPU decode press").
    /// </summary>
    [CudaFact]
    public void DecodePressesOnCuda_GreedyTextEqualsCpu()
    {
        DecodePressTextEqualsCpu("h2o:tokens=12,window=4");
        DecodePressTextEqualsCpu("rkv:tokens=12,every=8,window=4");
    }

    private static void DecodePressTextEqualsCpu(string press)
    {
        string[] args = ["generate", "--dummy", Path.Combine(RepoPaths.Root, "bench", "configs", "needle-gqa4.json"), "--dummy-type", "f32",
            "--temperature", "0.9", "--seed", "5", "-n", "48", "-p", "Once upon a time", "--decode-press", press];
        var cpu = Run(args);
        var gpu = Run([.. args, "--device", "cuda"]);
        Assert.Equal(0, gpu.Code);
        Assert.Equal(cpu.Out, gpu.Out);
    }
}
