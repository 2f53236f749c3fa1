using KvSharp.Compression.Registry;
using KvSharp.Evaluation.Running;

namespace KvSharp.Tests.Evaluation;

public class PressCompressorFactoryTests
{
    [Theory]
    [InlineData("snapkv", 0.25, "snapkv:keep=0.25")]
    [InlineData("snapkv:window=16", 0.5, "snapkv:window=16,keep=0.5")]
    [InlineData("vidkv", 1.0, "vidkv")]
    [InlineData("kvzip:keep=0.5 + kivi:bits=4", 1.0, "kvzip:keep=0.5 + kivi:bits=4")]
    public void KeepJoinsTheBudgetButAQuantizationPressRunsAsWrittenAtKeepOne(string press, double keep, string meant)
        => Assert.Equal(PressRegistry.Parse(meant).Text, new PressCompressorFactory().Create(press, keep).Name);

    /// <summary>A press with its own budget takes no keep ratio: the sweep runs it once, as written, whatever the ratio.</summary>
    [Theory]
    [InlineData("vidkv")]
    [InlineData("kivi:bits=2")]
    [InlineData("snapkv:keep=0.3")]
    public void APressWithItsOwnBudgetRunsAsWrittenAtAnyKeep(string press)
    {
        var factory = new PressCompressorFactory();
        Assert.False(factory.TakesKeepRatio(press));
        Assert.Equal(PressRegistry.Parse(press).Text, factory.Create(press, 0.5).Name);
    }
}
