using KvSharp.Compression.Registry;
using KvSharp.Compute.Cuda.Model;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// Which CPU presses <c>ask --device cuda</c> runs on the device (<see cref="CudaContextPresses.From"/>): each scored eviction
/// press whose scores the device computes maps to its device press with the CPU press's own budget, the quantization
/// presses to device re-quantization ranked by their scorer's device press, sequences to their presses in order; the
/// others are refused in one line naming the press and what the device lacks. No GPU needed.
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
    [InlineData("kvzipplus:keep=0.3", typeof(CudaKvzipPress), "global")]
    [InlineData("keynorm:keep=0.5", typeof(CudaAttentionFreePress), "uniform")]
    [InlineData("streamingllm+adakv:keep=0.3,sinks=8", typeof(CudaAttentionFreePress), "adakv")]
    [InlineData("random:keep=0.5,seed=3", typeof(CudaAttentionFreePress), "uniform")]
    [InlineData("rkv:keep=0.5", typeof(CudaWindowPress), "uniform")]
    [InlineData("dynamic(zipvl):mass=0.05", typeof(CudaH2oPress), "dynamic")]
    [InlineData("kvcompress:keep=0.5", typeof(CudaKvCompressPress), "global")]
    public void ScoredEvictionPresses_MapToTheirDevicePress_WithTheCpuBudget(string text, Type expected, string budget)
    {
        var cpu = PressRegistry.Parse(text);
        var press = CudaContextPresses.From(cpu);
        Assert.IsType(expected, press);
        Assert.Equal(cpu.Text, press.Text); // the same scorer parameters and budget as the CPU press
        Assert.StartsWith(budget, press.Text.Split('+')[1]);
    }

    [Fact]
    public void VidKv_MapsToTheDeviceEncoder_AsAFreshPrefillsOnlyPress()
    {
        var cpu = PressRegistry.Parse("vidkv:outliers=0.25,salient=3,residual=16");
        var press = Assert.IsType<CudaVidKvPress>(CudaContextPresses.From(cpu));
        Assert.Equal(cpu.Text, press.Text);
        Assert.Equal((0.25, 3, 16), (press.Press.Outliers, press.Press.Salient, press.Press.Residual));
        Assert.True(press.NeedsFreshPrefill);
    }

    [Fact]
    public void SnapKvWindowPress_TakesTheScorersWindowKernelAndPool_TovaOneUnpooledQuery()
    {
        var snap = Assert.IsType<CudaWindowPress>(CudaContextPresses.From(PressRegistry.Parse("snapkv:keep=0.3,window=16,kernel=5,pool=max")));
        Assert.Equal((16, 5, "max"), (snap.Window, snap.Kernel, snap.Pool));
        var tova = Assert.IsType<CudaWindowPress>(CudaContextPresses.From(PressRegistry.Parse("tova:keep=0.3")));
        Assert.Equal((1, 1, "avg"), (tova.Window, tova.Kernel, tova.Pool));
    }

    [Fact]
    public void RkvObservesSnapKvsWindowMaxPooled_ZipVlScorerH2oWithoutWindow()
    {
        var rkv = Assert.IsType<CudaWindowPress>(CudaContextPresses.From(PressRegistry.Parse("rkv:keep=0.5,window=16,kernel=5")));
        Assert.Equal((16, 5, "max"), (rkv.Window, rkv.Kernel, rkv.Pool));
        Assert.True(rkv.NeedsFreshPrefill);
        var zipVl = Assert.IsType<CudaH2oPress>(CudaContextPresses.From(PressRegistry.Parse("uniform(zipvl):keep=0.5,chunk=48")));
        Assert.Equal((0, 48), (zipVl.Scorer.Window, zipVl.Scorer.Chunk));
    }

    [Theory]
    [InlineData("kivi:bits=2", null, false)]
    [InlineData("kivi:bits=4,residual=32", null, false)]
    [InlineData("mikv(h2o):top=0.2", typeof(CudaH2oPress), true)]
    [InlineData("mikv(keynorm):top=0.3,high=int8,low=int4", typeof(CudaAttentionFreePress), false)]
    [InlineData("zipvl:tau=0.9", typeof(CudaWindowPress), true)]
    [InlineData("leankv(h2o):high=0.8,low=0.95", typeof(CudaH2oPress), true)]
    [InlineData("leankv:prune=false", typeof(CudaWindowPress), true)]
    [InlineData("zipvl(rkv):tau=0.9", typeof(CudaWindowPress), true)]
    public void QuantizationPresses_MapToDeviceRequantization_RankedByTheirScorersDevicePress(string text, Type? scoring, bool fresh)
    {
        var cpu = PressRegistry.Parse(text);
        var press = Assert.IsType<CudaQuantizationPress>(CudaContextPresses.From(cpu));
        Assert.Same(cpu, press.Press);
        Assert.Equal(cpu.Text, press.Text);
        if (scoring == null) Assert.Null(press.Scoring);
        else Assert.IsType(scoring, press.Scoring);
        Assert.Equal(fresh, press.NeedsFreshPrefill);
    }

    [Fact]
    public void KvTuner_MapsToDeviceRequantization()
    {
        using var dir = new TempDir();
        string file = Path.Combine(dir.Path, "kvtuner.json");
        File.WriteAllText(file, "{\"layers\": [\"KV8\", \"K4V2\"]}");
        var press = Assert.IsType<CudaQuantizationPress>(CudaContextPresses.From(PressRegistry.Parse($"kvtuner:file={file}")));
        Assert.Null(press.Scoring);
        Assert.False(press.NeedsFreshPrefill);
    }

    [Fact]
    public void KvCrush_MapsToItsImportancePressOnTheDevice()
    {
        var cpu = PressRegistry.Parse("kvcrush(h2o):keep=0.2,reps=0.1");
        var press = Assert.IsType<CudaKvCrushPress>(CudaContextPresses.From(cpu));
        Assert.IsType<CudaH2oPress>(press.Inner);
        Assert.Equal(cpu.Text, press.Text);
        Assert.True(press.NeedsFreshPrefill);
    }

    [Theory]
    [InlineData("snapkv:keep=0.5 + kivi:bits=2,residual=32", new[] { typeof(CudaWindowPress), typeof(CudaQuantizationPress) })]
    [InlineData("h2o:keep=0.5 + streamingllm:keep=0.8 + mikv(keynorm):top=0.5", new[] { typeof(CudaH2oPress), typeof(CudaAttentionFreePress), typeof(CudaQuantizationPress) })]
    [InlineData("kivi:bits=4 + keynorm:keep=0.5", new[] { typeof(CudaQuantizationPress), typeof(CudaAttentionFreePress) })]
    public void Sequences_MapToTheirPressesInOrder(string text, Type[] stages)
    {
        var cpu = PressRegistry.Parse(text);
        var press = Assert.IsType<CudaSequencePress>(CudaContextPresses.From(cpu));
        Assert.Equal(stages, press.Presses.Select(p => p.GetType()));
        Assert.Equal(cpu.Text, press.Text);
    }

    [Theory]
    [InlineData("mikv(h2o):top=0.2,keys=token", "balance")]
    [InlineData("snapkv:keep=0.5+kvzip:keep=0.5", "first press")]
    [InlineData("kivi:bits=2 + h2o:keep=0.5", "fresh prefill")]
    [InlineData("snapkv:keep=0.5 + vidkv", "first press")]
    [InlineData("vidkv + keynorm:keep=0.5", "no press can follow")]
    [InlineData("streamingllm:keep=0.5 + mikv(h2o):top=0.2,keys=token", "one of its presses is refused")]
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
