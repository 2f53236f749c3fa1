using KvSharp.Cli.Commands;
using KvSharp.Cli.Engine;
using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Tests.Cuda;

/// <summary><c>kvsharp generate --device cuda</c>: one clear line without a GPU, the CPU engine's text with one.</summary>
public class CudaCliTests
{
    private static readonly string Stories = RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf");

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
    public void CacheFilesAndResidualWindows_AreRejectedOnCuda()
    {
        using var dir = new TempDir();
        var load = Run("generate", "-m", Stories, "-p", "x", "--device", "cuda", "--save-cache", Path.Combine(dir.Path, "c.kvc"));
        Assert.Equal(2, load.Code);
        Assert.Contains("--save-cache", load.Err);
        Assert.Contains("--device cuda", load.Err);
        var residual = Run("generate", "-m", Stories, "-p", "x", "--device", "cuda", "--kv-cache", "int2+r64");
        Assert.Equal(2, residual.Code);
        Assert.Contains("Int2+r64", residual.Err);
        Assert.Contains("+r", residual.Err);
        Assert.DoesNotContain("   at ", load.Err + residual.Err);
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
}
