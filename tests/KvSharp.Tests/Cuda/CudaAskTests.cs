using KvSharp.Cli.Commands;
using KvSharp.Cli.Engine;
using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// <c>kvsharp ask --device cuda</c>'s refusals, decided before any GPU work: presses the device does not run (named in one
/// line), KVzip+, the CPU-only modes; without a GPU a KVzip ask ends in the one CUDA line. The GPU comparison of CPU and GPU
/// answers is scripts/gpu-tests.sh kvzip-cli.
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
    [InlineData("snapkv:keep=0.5", "snapkv")]
    [InlineData("streamingllm:keep=0.3", "streamingllm")]
    [InlineData("kvzipplus:keep=0.3", "KVzip+")]
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

    [Fact]
    public void Kvzip_WithoutGpu_OneCudaUnavailableLine()
    {
        if (CudaDevice.IsAvailable) return; // the GPU case is scripts/gpu-tests.sh kvzip-cli
        var r = Ask("--press", "kvzip:keep=0.3");
        Assert.Equal(1, r.Code);
        Assert.StartsWith("kvsharp: CUDA unavailable: ", r.Err);
        Assert.Single(r.Err.TrimEnd().Split('\n'));
    }
}
