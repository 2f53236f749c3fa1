using KvSharp.Compression.Presses;
using KvSharp.Compression.Quantization;
using KvSharp.Compression.Registry;
using KvSharp.Compression.Scorers;

namespace KvSharp.Tests.Compression.Quantization;

public class QuantizationRegistryTests
{
    [Theory]
    [InlineData("kivi", "kivi:bits=2,group=32,residual=128")]
    [InlineData("KIVI:bits=4,residual=32", "kivi:bits=4,group=32,residual=32")]
    [InlineData("mikv(keynorm):top=0.3", "mikv(keynorm):high=int8,low=int2,top=0.3,keys=channel")]
    [InlineData("mikv", "mikv(h2o:window=32,chunk=64):high=int8,low=int2,top=0.2,keys=channel")]
    [InlineData("mikv:keys=token", "mikv(h2o:window=32,chunk=64):high=int8,low=int2,top=0.2,keys=token,qwindow=64")]
    [InlineData("mikv(snapkv:window=16):high=f16,low=int4:int2,keys=token", "mikv(snapkv:window=16,kernel=7,pool=avg):high=f16,low=int4:int2,top=0.2,keys=token,qwindow=64")]
    [InlineData("mikv:keys=channel,qwindow=8", "mikv(h2o:window=32,chunk=64):high=int8,low=int2,top=0.2,keys=channel")]
    [InlineData("zipvl(tova):tau=0.9", "zipvl(tova):tau=0.9,high=int8,low=int2")]
    [InlineData("leankv(tova)", "leankv(tova):high=0.9,low=0.99,important=int8:int4,less=int4:int2")]
    [InlineData("leankv:prune=false", "leankv(snapkv:window=32,kernel=7,pool=avg):high=0.9,low=0.99,important=int8:int4,less=int4:int2,prune=false")]
    [InlineData("mikv(kvzip)", "mikv(kvzip:chunk=2000):high=int8,low=int2,top=0.2,keys=channel")]
    [InlineData("zipvl(kvzip:plus=true)", "zipvl(kvzip:chunk=2000,plus=true):tau=0.95,high=int8,low=int2")]
    [InlineData("leankv(kvzip:chunk=500)", "leankv(kvzip:chunk=500):high=0.9,low=0.99,important=int8:int4,less=int4:int2")]
    [InlineData("vidkv", "vidkv:outliers=0.5,salient=2,residual=0")]
    [InlineData("vidkv:outliers=0.25,salient=0,residual=32", "vidkv:outliers=0.25,salient=0,residual=32")]
    [InlineData("keynorm:keep=0.5 + kivi:bits=4", "keynorm+uniform:keep=0.5 + kivi:bits=4,group=32,residual=128")]
    [InlineData("kivi + keynorm+pyramid:keep=0.25", "kivi:bits=2,group=32,residual=128 + keynorm+pyramid:keep=0.25,beta=20")]
    public void TextFormsRoundTrip(string text, string canonical)
    {
        var press = PressRegistry.Parse(text);
        Assert.Equal(canonical, press.Text);
        Assert.Equal(canonical, PressRegistry.Parse(press.Text).Text);
    }

    /// <summary>KVzip's default budget is global; inside a quantizer only its scorer is used (the tiers decide).</summary>
    [Theory]
    [InlineData("mikv(kvzip)")]
    [InlineData("zipvl(kvzip)")]
    [InlineData("leankv(kvzip)")]
    public void QuantizersTakeKvzipScores(string text)
    {
        var press = PressRegistry.Parse(text);
        var scorer = press switch
        {
            MiKvPress m => m.Scorer,
            ZipVlPress z => z.Scorer,
            LeanKvPress l => l.Scorer,
            _ => throw new Xunit.Sdk.XunitException($"{text} built {press.GetType().Name}"),
        };
        Assert.IsType<KvzipScorer>(scorer);
    }

    [Fact]
    public void ComposesWithEviction()
    {
        var press = Assert.IsType<SequentialPress>(PressRegistry.Parse("kvzip:keep=0.4 + mikv:high=int8,low=int2,top=0.2"));
        Assert.IsType<ScoredPress>(press.Presses[0]);
        Assert.IsType<MiKvPress>(press.Presses[1]);
    }

    [Theory]
    [InlineData("kivi:bits=3", "bits=3")]
    [InlineData("kivi:bogus=1", "unknown parameter 'bogus'", "residual")]
    [InlineData("kivi(snapkv)", "kivi takes no scorer")]
    [InlineData("vidkv(snapkv)", "vidkv takes no scorer")]
    [InlineData("vidkv:outliers=2", "outliers")]
    [InlineData("kvtuner", "kvtuner needs file=PATH")]
    [InlineData("kvtuner:file=/nonexistent/k.json", "/nonexistent/k.json", "not found")]
    [InlineData("mikv:high=int7", "high=int7", "unknown KV format")]
    [InlineData("mikv(snapkv+pyramid)", "takes one scorer")]
    [InlineData("mikv(kvzip:keep=0.3)", "no budget", "kvzip:keep=0.3")]
    [InlineData("zipvl(kvzip:level=pair-uniform)", "no budget")]
    [InlineData("leankv(adakv(snapkv))", "no budget")]
    [InlineData("leankv:prune=maybe", "prune=maybe")]
    [InlineData("mikv(nosuch)", "unknown method 'nosuch'")]
    [InlineData("leankv:high=0.99,low=0.9", "high=0.99", "low=0.9")]
    [InlineData("kivi + pyramid", "'pyramid' needs a scorer")]
    [InlineData("foo", "quantizers: kivi, kvtuner, mikv, zipvl, leankv, vidkv")]
    public void ErrorsNameTheProblem(string text, params string[] fragments)
    {
        var e = Assert.ThrowsAny<KvSharpException>(() => PressRegistry.Parse(text));
        foreach (var f in fragments) Assert.Contains(f, e.Message);
    }
}
