using KvSharp.Compression.Presses;
using KvSharp.Compression.Registry;

namespace KvSharp.Tests.Compression;

/// <summary>The press text form: what it builds, canonical texts that round-trip, and errors that name the problem.</summary>
public class RegistryTests
{
    [Theory]
    [InlineData("keynorm+pyramid:keep=0.25", "keynorm+pyramid:keep=0.25,beta=20")]
    [InlineData("kvzip:keep=0.3,level=pair", "kvzip:chunk=2000+global:keep=0.3")]
    [InlineData("kvzip", "kvzip:chunk=2000+global:keep=0.3")]
    [InlineData("kvzip:level=head,keep=0.5", "kvzip:chunk=2000+head:keep=0.5")]
    [InlineData("snapkv+pyramid:keep=0.25,window=32", "snapkv:window=32,kernel=7,pool=avg+pyramid:keep=0.25,beta=20")]
    [InlineData("adakv(snapkv:window=16,pool=max):keep=0.25", "snapkv:window=16,kernel=7,pool=max+adakv:keep=0.25,floor=0.2")]
    [InlineData("dbudgetkv", "snapkv:window=32,kernel=7,pool=avg+dynamic:mass=0.01")]
    [InlineData("h2o:tokens=64", "h2o:window=32,chunk=64+uniform:tokens=64")]
    [InlineData("tova+dynamic:mass=0.05", "tova+dynamic:mass=0.05")]
    [InlineData("kvcrush(h2o):keep=0.2,reps=0.05,anchor=mean", "h2o:window=32,chunk=64+uniform:keep=0.2+kvcrush:reps=0.05,anchor=mean")]
    [InlineData("kvcrush(snapkv+pyramid):keep=0.2,anchor=random,seed=3", "snapkv:window=32,kernel=7,pool=avg+pyramid:keep=0.2,beta=20+kvcrush:reps=0.05,anchor=random,seed=3")]
    [InlineData("adakv(keynorm):keep=0.25", "keynorm+adakv:keep=0.25,floor=0.2")]
    [InlineData("ADAKV( keynorm ):keep=0.25,floor=0.5", "keynorm+adakv:keep=0.25,floor=0.5")]
    [InlineData("streamingllm:sinks=8,level=pair,keep=0.1", "streamingllm:sinks=8+global:keep=0.1")]
    [InlineData("streamingllm:sinks=8+pair:keep=0.1", "streamingllm:sinks=8+global:keep=0.1")]
    [InlineData("random:tokens=16", "random:seed=0+uniform:tokens=16")]
    [InlineData("keynorm:total=4096,level=head", "keynorm+head:total=4096")]
    [InlineData("keynorm:level=pair-uniform", "keynorm+uniform:keep=0.5")]
    [InlineData("streaming:keep=0.5 + keynorm:keep=0.5", "streamingllm:sinks=4+uniform:keep=0.5 + keynorm+uniform:keep=0.5")]
    [InlineData("streamingllm+keynorm", "streamingllm:sinks=4+uniform:keep=0.5 + keynorm+uniform:keep=0.5")]
    public void Parse_BuildsTheCanonicalPress(string text, string canonical)
    {
        var press = PressRegistry.Parse(text);
        Assert.Equal(canonical, press.Text);
        Assert.Equal(canonical, PressRegistry.Parse(press.Text).Text);
    }

    [Fact]
    public void Parse_SequenceIsSequential()
    {
        var press = Assert.IsType<SequentialPress>(PressRegistry.Parse("streamingllm:keep=0.5 + keynorm:keep=0.5"));
        Assert.Equal(2, press.Presses.Count);
        Assert.All(press.Presses, p => Assert.IsType<ScoredPress>(p));
    }

    [Theory]
    [InlineData("foo", "unknown method 'foo'", "streamingllm", "pyramid")]
    [InlineData("", "empty", "keynorm")]
    [InlineData("keynorm:bogus=1", "unknown parameter 'bogus'", "keep", "tokens", "total", "level")]
    [InlineData("streamingllm+pyramid:window=3", "unknown parameter 'window'", "sinks", "beta")]
    [InlineData("keynorm:keep=2", "keep=2", "[0, 1]")]
    [InlineData("keynorm:keep=abc", "keep=abc")]
    [InlineData("streamingllm:sinks=-1", "sinks=-1", "integer")]
    [InlineData("keynorm:keep=0.2,tokens=3", "keep and tokens")]
    [InlineData("pyramid:keep=0.2", "needs a scorer", "snapkv+pyramid")]
    [InlineData("adakv(keynorm", "unbalanced '('")]
    [InlineData("keynorm)", "unbalanced ')'")]
    [InlineData("keynorm(adakv)", "only a budget or a selector can wrap", "adakv", "kvcrush")]
    [InlineData("kvcrush(keynorm):anchor=median", "anchor=median", "alternate")]
    [InlineData("keynorm+pyramid+adakv", "2 budgets")]
    [InlineData("keynorm:level=pair+pyramid", "not both")]
    [InlineData("keynorm:level=layer", "level=layer", "pair-uniform")]
    [InlineData("keynorm:keep", "not name=value")]
    [InlineData("keynorm:", "nothing after ':'")]
    [InlineData("dbudgetkv:keep=0.3", "unknown parameter 'keep'", "mass")]
    [InlineData("snapkv:kernel=4", "kernel must be odd")]
    [InlineData("snapkv:pool=min", "pool=min", "avg, max")]
    [InlineData("keynorm + ", "empty part")]
    [InlineData("keynorm:keep=0.1,keep=0.2", "given twice")]
    public void Parse_RejectsBadTextNamingTheProblem(string text, params string[] mentions)
    {
        var e = Assert.Throws<KvSharpException>(() => PressRegistry.Parse(text));
        Assert.StartsWith("press '", e.Message);
        foreach (var m in mentions) Assert.Contains(m, e.Message);
    }

    [Fact]
    public void Presses_DescribeEveryNameWithItsParameters()
    {
        var names = PressRegistry.Presses.Select(p => p.Name).ToList();
        Assert.Equal(names.Count, names.Distinct().Count());
        Assert.Contains("pyramid", names);
        Assert.Contains(PressRegistry.Presses.Single(p => p.Name == "streamingllm").Parameters, p => p.Name == "sinks" && p.Default == "4");
        // Every registered name parses on its own (budgets after a scorer), except those that require a file.
        foreach (var p in PressRegistry.Presses.Where(p => !p.Parameters.Any(x => x.Description.EndsWith("required", StringComparison.Ordinal))))
            Assert.NotNull(PressRegistry.Parse(p.Kind == PressPartKind.Scorer ? p.Name : "keynorm+" + p.Name));
    }

    [Fact]
    public void KvzipPlus_IsKvzipWithPlus_AndParsesBack()
    {
        var press = PressRegistry.Parse("kvzipplus:keep=0.25");
        Assert.Equal("kvzip:chunk=2000,plus=true+global:keep=0.25", press.Text);
        Assert.Equal(press.Text, PressRegistry.Parse(press.Text).Text);
        Assert.Equal(press.Text, PressRegistry.Parse("kvzip:plus=true,keep=0.25").Text);
        Assert.Equal("kvzip:chunk=2000+global:keep=0.3", PressRegistry.Parse("kvzip:plus=false").Text);
        Assert.Contains("plus=maybe must be one of false, true", Assert.Throws<KvSharpException>(() => PressRegistry.Parse("kvzip:plus=maybe")).Message);
    }
}
