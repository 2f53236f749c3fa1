using KvSharp.Compression.Registry;
using KvSharp.Compute.Cuda.Model;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// Which CPU presses <c>ask --device cuda</c> runs on the device (<see cref="CudaContextPresses.From"/>): each scored eviction
/// press whose scores the device computes maps to its device press with the CPU press's own budget; the others are
/// refused in one line naming the press (quantization presses pointing at --kv-cache). No GPU needed.
/// </summary>
public class CudaContextPressesTests
{
    [Theory]
    [InlineData("snapkv:keep=0.3", typeof(CudaWindowPress), "uniform")]
    [InlineData("snapkv+pyramid:keep=0.25,window=16", typeof(CudaWindowPress), "pyramid")]
    [InlineData("adakv(snapkv):keep=0.3", typeof(CudaWindowPress), "adakv")]
    [InlineData("dbudgetkv:mass=0.05", typeof(CudaWindowPress), "dynamic")]
    [InlineData("tova:keep=0.4", typeof(CudaWindowPress), "uniform")]
    [InlineData("h2o:keep=0.3", typeof(CudaH2oPress), "uniform")]
    [InlineData("h2o+global:keep=0.3,chunk=100", typeof(CudaH2oPress), "global")]
    [InlineData("kvzip:keep=0.3", typeof(CudaKvzipPress), "global")]
    [InlineData("kvzip+uniform:keep=0.5", typeof(CudaKvzipPress), "uniform")]
    [InlineData("keynorm:keep=0.5", typeof(CudaAttentionFreePress), "uniform")]
    [InlineData("streamingllm+adakv:keep=0.3,sinks=8", typeof(CudaAttentionFreePress), "adakv")]
    [InlineData("random:keep=0.5,seed=3", typeof(CudaAttentionFreePress), "uniform")]
    public void ScoredEvictionPresses_MapToTheirDevicePress_WithTheCpuBudget(string text, Type expected, string budget)
    {
        var cpu = PressRegistry.Parse(text);
        var press = CudaContextPresses.From(cpu);
        Assert.IsType(expected, press);
        Assert.Equal(cpu.Text, press.Text); // the same scorer parameters and budget as the CPU press
        Assert.StartsWith(budget, press.Text.Split('+')[1]);
    }

    [Fact]
    public void SnapKvWindowPress_TakesTheScorersWindowKernelAndPool_TovaOneUnpooledQuery()
    {
        var snap = Assert.IsType<CudaWindowPress>(CudaContextPresses.From(PressRegistry.Parse("snapkv:keep=0.3,window=16,kernel=5,pool=max")));
        Assert.Equal((16, 5, "max"), (snap.Window, snap.Kernel, snap.Pool));
        var tova = Assert.IsType<CudaWindowPress>(CudaContextPresses.From(PressRegistry.Parse("tova:keep=0.3")));
        Assert.Equal((1, 1, "avg"), (tova.Window, tova.Kernel, tova.Pool));
    }

    [Theory]
    [InlineData("kvzipplus:keep=0.3", "KVzip+")]
    [InlineData("kivi:bits=2", "--kv-cache")]
    [InlineData("mikv(h2o):top=0.2", "--kv-cache")]
    [InlineData("leankv", "--kv-cache")]
    [InlineData("rkv:keep=0.5", "snapkv, dbudgetkv, tova, h2o, kvzip, keynorm, streamingllm and random")]
    [InlineData("kvcompress:keep=0.5", "any budget")]
    [InlineData("kvcrush(h2o):keep=0.2", "--device cpu")]
    [InlineData("snapkv:keep=0.5+kvzip:keep=0.5", "--device cpu")]
    public void OtherPresses_AreRefusedInOneLineNamingThem(string text, string reason)
    {
        var cpu = PressRegistry.Parse(text);
        var e = Assert.Throws<KvSharpException>(() => CudaContextPresses.From(cpu));
        Assert.Contains(cpu.Text, e.Message);
        Assert.Contains("GPU", e.Message);
        Assert.Contains(reason, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
