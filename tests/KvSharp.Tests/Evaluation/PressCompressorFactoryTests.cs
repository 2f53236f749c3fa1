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

    [Fact]
    public void AQuantizationPressAtAnotherKeepIsRefusedByName()
    {
        var e = Assert.ThrowsAny<KvSharpException>(() => new PressCompressorFactory().Create("vidkv", 0.5));
        Assert.Contains("keep", e.Message);
    }
}
