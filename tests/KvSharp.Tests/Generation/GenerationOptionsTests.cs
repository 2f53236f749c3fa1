using KvSharp.Generation;
using KvSharp.Generation.Sampling;

namespace KvSharp.Tests.Generation;

public class GenerationOptionsTests
{
    [Fact]
    public void Defaults_AreValid()
    {
        var o = new GenerationOptions();
        o.Validate();
        Assert.True(o.StopAtEos);
        Assert.Empty(o.StopStrings);
    }

    [Fact]
    public void Seed_OverridesSamplerSeed()
    {
        var o = new GenerationOptions { Sampler = new SamplerOptions { Seed = 1, TopK = 7 }, Seed = 99 };
        Assert.Equal(99UL, o.EffectiveSampler.Seed);
        Assert.Equal(7, o.EffectiveSampler.TopK);
        Assert.Equal(1UL, (o with { Seed = null }).EffectiveSampler.Seed);
    }

    public static TheoryData<string, GenerationOptions> Invalid => new()
    {
        { "--max-tokens", new GenerationOptions { MaxTokens = -1 } },
        { "--top-p", new GenerationOptions { Sampler = new SamplerOptions { TopP = 1.01f } } },
        { "--top-p", new GenerationOptions { Sampler = new SamplerOptions { TopP = float.NaN } } },
        { "--temperature", new GenerationOptions { Sampler = new SamplerOptions { Temperature = -1f } } },
        { "--top-k", new GenerationOptions { Sampler = new SamplerOptions { TopK = -5 } } },
        { "--repeat-penalty", new GenerationOptions { Sampler = new SamplerOptions { RepetitionPenalty = -1f } } },
        { "--stop", new GenerationOptions { StopStrings = ["</s>", ""] } },
    };

    [Theory]
    [MemberData(nameof(Invalid))]
    public void Validate_NamesTheOption(string option, GenerationOptions options)
    {
        var ex = Assert.Throws<KvSharpException>(options.Validate);
        Assert.StartsWith(option + " ", ex.Message);
    }
}
