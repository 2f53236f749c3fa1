using KvSharp.Compression.Quantization;

namespace KvSharp.Tests.Compression.Quantization;

public class MassTiersTests
{
    [Fact]
    public void TiersFollowCumulativeMass()
    {
        // Sorted: 0.5 (idx 1), 0.3 (idx 3), 0.15 (idx 0), 0.05 (idx 2). Mass before each: 0, 0.5, 0.8, 0.95.
        float[] s = [0.15f, 0.5f, 0.05f, 0.3f];
        Assert.Equal([1, 0, 2, 0], MassTiers.Classify(s, [0.6, 0.9]));
        Assert.Equal([0, 0, 0, 0], MassTiers.Classify(s, [1.0]));
        Assert.Equal([1, 1, 1, 1], MassTiers.Classify(s, [0.0]));
        Assert.Equal([0, 0, 1, 0], MassTiers.Classify(s, [0.9]));
    }

    [Fact]
    public void ForcedTokensAreTierZeroOutsideTheMass()
    {
        float[] s = [float.PositiveInfinity, 0.1f, 0.9f];
        Assert.Equal([0, 1, 0], MassTiers.Classify(s, [0.5]));
    }

    [Fact]
    public void NegativeScoresAreRefused()
    {
        var e = Assert.Throws<KvSharpException>(() => MassTiers.Classify([-1f, 2f], [0.5]));
        Assert.Contains("attention scorer", e.Message);
    }
}
