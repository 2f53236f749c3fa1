using KvSharp.Cli.Commands;
using KvSharp.Cli.Engine;
using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// <c>kvsharp ask --device cuda</c>'s refusals, decided before any GPU work: presses the device does not run (named in one
/// line: MiKV's balanced keys, VidKV, KVzip+, a sequence with a refused press), the CPU-only modes; without a GPU an ask with a
/// device press (eviction, quantization, a sequence) ends in the one CUDA line. The GPU comparison of CPU and GPU answers is scripts/gpu-tests.sh press-cli.
/// </summary>
public class CudaAskTests
{
    private static readonly string Stories = RepoPaths.SharedFile("models", "stories260k", "stories260K.gguf");

    private static (int Code, string Err) Ask(params string[] extra)
    {
        using var dir = new TempDir();
        string context = Path.Combine(dir.Path, "context.txt");
        File.WriteAllText(context, "Once upon a time there was a little cat.");
        var output = new StringWriter();
        var error = new StringWriter();
        var cli = new CliContext(new EngineFacade(error), new StringReader(""), output, error, CancellationToken.None);
        int code = KvSharpCommandLine.Run(["ask", "-m", Stories, "--context", context, "-q", "Who?", "--device", "cuda", .. extra], cli);
        return (code, error.ToString());
    }

    [Theory]
    [InlineData("mikv(h2o):top=0.2,keys=token", "keys=token")]
    [InlineData("kivi:bits=2 + snapkv:keep=0.5", "snapkv")]
    public void PressesTheDeviceDoesNotRun_AreRefusedInOneLineNamingThem(string press, string named)
    {
        var r = Ask("--press", press);
        Assert.NotEqual(0, r.Code);
        Assert.Contains(named, r.Err);
        Assert.Contains("GPU", r.Err);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
        Assert.DoesNotContain("   at ", r.Err);
    }

    [Theory]
    [InlineData("--query-aware")]
    [InlineData("--compare")]
    public void CpuOnlyModes_AreUsageErrors(string mode)
    {
        var r = Ask("--press", "kvzip:keep=0.3", mode);
        Assert.Equal(2, r.Code);
        Assert.Contains(mode, r.Err);
        Assert.Contains("--device cuda", r.Err);
    }

    [Theory]
    [InlineData("kvzip:keep=0.3")]
    [InlineData("kvzipplus:keep=0.3")]
    [InlineData("vidkv")]
    [InlineData("snapkv+pyramid:keep=0.3")]
    [InlineData("h2o:keep=0.3")]
    [InlineData("streamingllm:keep=0.3")]
    [InlineData("rkv:keep=0.5")]
    [InlineData("kivi:bits=2,residual=32")]
    [InlineData("mikv(snapkv):top=0.2")]
    [InlineData("snapkv:keep=0.5 + kivi:bits=4,residual=32")]
    public void DevicePresses_WithoutGpu_OneCudaUnavailableLine(string press)
    {
        if (CudaDevice.IsAvailable) return; // the GPU case is scripts/gpu-tests.sh press-cli
        var r = Ask("--press", press);
        Assert.Equal(1, r.Code);
        Assert.StartsWith("kvsharp: CUDA unavailable: ", r.Err);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
    }

    [Theory]
    [InlineData("h2o:tokens=64")]
    [InlineData("rkv:tokens=64,every=16")]
    public void DecodePresses_WithoutGpu_OneCudaUnavailableLine(string press)
    {
        if (CudaDevice.IsAvailable) return; // the GPU case is the GPU check "press: decode-time H2O / R-KV on the device"
        var r = Ask("--press", "snapkv:keep=0.5", "--decode-press", press);
        Assert.Equal(1, r.Code);
        Assert.StartsWith("kvsharp: CUDA unavailable: ", r.Err);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
    }

    [Fact]
    public void DecodePressAfterVidKv_IsAUsageErrorNamingBoth()
    {
        var r = Ask("--press", "vidkv", "--decode-press", "h2o:tokens=64");
        Assert.Equal(2, r.Code);
        Assert.Contains("--decode-press h2o", r.Err);
        Assert.Contains("vidkv", r.Err);
        Assert.DoesNotContain("   at ", r.Err);
    }
}
