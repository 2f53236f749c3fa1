using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Generation.Sampling;

namespace KvSharp.GpuTests.Checks;

/// <summary>
/// Sampling against <see cref="ReferenceSampler"/> (the rules spelled out with a full sort and plain float64 sums) on
/// fresh random logits: the CPU <see cref="Sampler"/> (no GPU needed) and the device <see cref="CudaSampler"/>, each fed
/// the same options and seed. A choice may differ from the reference only where the reference's margin is at rounding
/// level (an implementation adding in another order), and such cases must be rare.
/// </summary>
public static class SamplingChecks
{
    private const double RoundingMargin = 1e-9;
    private const int Steps = 12;

    /// <summary>One sampling situation: logits, the history the penalty reads, the options (with their seed).</summary>
    public sealed record Case(string Name, float[] Logits, int[] Recent, SamplerOptions Options);

    /// <summary>
    /// The situations every sampler must get right: the defaults (top-k 40, top-p 0.95, temperature 0.8) on a small and
    /// a Llama-3-sized vocabulary (top-k up to 1024 and greedy run the device's per-slice first stage), top-p over the whole vocabulary, min-p alone, temperature alone, top-k beyond a
    /// thousand, the repetition penalty (with greedy too), many equal logits crossing every cut, a peaked row, greedy.
    /// </summary>
    public static IReadOnlyList<Case> Cases(RandomData rnd)
    {
        float[] Normal(int n, float scale)
        {
            var u = rnd.Floats(2 * n);
            var v = new float[n];
            for (int i = 0; i < n; i++)
                v[i] = scale * (float)(Math.Sqrt(-2 * Math.Log(Math.Max(1e-12, (u[2 * i] + 1) / 2))) * Math.Cos(Math.PI * u[2 * i + 1]));
            return v;
        }
        int[] Recent(int n, int vocab) => Enumerable.Range(0, n).Select(i => i % 3 == 0 ? 7 : rnd.Next(vocab)).ToArray(); // with repeats
        ulong Seed() => (ulong)rnd.Next(int.MaxValue);
        var plain = new SamplerOptions { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f, RepetitionPenalty = 1f };
        var ties = Normal(20000, 1f).Select(v => MathF.Round(v * 2) / 2).ToArray(); // a handful of distinct values
        var peaked = Normal(5000, 1f);
        peaked[4321] = 25f;
        return
        [
            new("defaults, vocabulary 1000", Normal(1000, 3f), [], new SamplerOptions { Seed = Seed() }),
            new("defaults, vocabulary 128256", Normal(128256, 3f), [], new SamplerOptions { Seed = Seed() }),
            new("top-p 0.9 over the whole vocabulary", Normal(50000, 4f), [], plain with { TopP = 0.9f, Temperature = 0.7f, Seed = Seed() }),
            new("min-p 0.05 alone", Normal(32000, 3f), [], plain with { MinP = 0.05f, Temperature = 1.3f, Seed = Seed() }),
            new("temperature alone", Normal(32000, 2f), [], plain with { Temperature = 0.6f, Seed = Seed() }),
            new("top-k 2000 then top-p 0.5", Normal(40000, 2f), [], plain with { TopK = 2000, TopP = 0.5f, Seed = Seed() }),
            new("repetition penalty 1.3 over the last 64", Normal(8000, 3f), Recent(300, 8000),
                new SamplerOptions { RepetitionPenalty = 1.3f, Seed = Seed() }),
            new("repetition penalty over the whole history, greedy", Normal(8000, 3f), Recent(500, 8000),
                SamplerOptions.Greedy with { RepetitionPenalty = 1.5f, RepeatLastN = -1 }),
            new("equal logits across every cut", ties, [], plain with { TopK = 3000, TopP = 0.6f, MinP = 0.2f, Seed = Seed() }),
            new("equal logits, top-p alone", ties, [], plain with { TopP = 0.3f, Seed = Seed() }),
            new("equal logits, top-k 300 across slices", ties, [], plain with { TopK = 300, Temperature = 2f, Seed = Seed() }),
            new("one dominant token", peaked, [], new SamplerOptions { Temperature = 1.5f, Seed = Seed() }),
            new("greedy", Normal(32000, 3f), [], SamplerOptions.Greedy),
        ];
    }

    /// <summary>The CPU sampler against the reference, <see cref="Steps"/> draws per case.</summary>
    public static string CpuMatchesReference()
    {
        var rnd = new RandomData();
        return Compare(rnd, "CPU sampler", c =>
        {
            var sampler = new Sampler(c.Options);
            return (() => sampler.Sample(c.Logits, c.Recent), () => { });
        });
    }

    /// <summary>The device sampler against the reference and against the CPU sampler with the same seed.</summary>
    public static string DeviceMatchesReference()
    {
        var rnd = new RandomData();
        var dev = CudaDevice.Shared;
        return Compare(rnd, "device sampler", c =>
        {
            var sampler = new CudaSampler(dev, c.Logits.Length, c.Options);
            var logits = DeviceData.Upload(c.Logits);
            return (() =>
            {
                logits.Upload<float>(c.Logits); // the penalty works in place: every draw starts from the row
                return sampler.Sample(logits.Pointer, c.Recent);
            }, () => { sampler.Dispose(); logits.Dispose(); }
            );
        });
    }

    private static string Compare(RandomData rnd, string what, Func<Case, (Func<int> Sample, Action Dispose)> start)
    {
        int draws = 0, nearBoundary = 0, cases = 0;
        foreach (var c in Cases(rnd))
        {
            var (sample, dispose) = start(c);
            try
            {
                var reference = new ReferenceSampler(c.Logits, c.Recent, c.Options);
                using var uniforms = ReferenceSampler.Uniforms(c.Options.Seed).GetEnumerator();
                for (int step = 0; step < Steps; step++)
                {
                    double u = 0;
                    if (!c.Options.IsGreedy) { uniforms.MoveNext(); u = uniforms.Current; }
                    int expected = reference.Draw(u, out double margin);
                    int got = sample();
                    draws++;
                    if (got == expected) continue;
                    if (margin < RoundingMargin) { nearBoundary++; continue; }
                    throw new CheckFailedException($"{what}, {c.Name}, draw {step}: token {got}, the reference's {expected} (u {u:R}, margin {margin:E2}, seed {rnd.Seed})");
                }
            }
            finally { dispose(); }
            cases++;
        }
        if (nearBoundary * 50 > draws) throw new CheckFailedException($"{what}: {nearBoundary} of {draws} draws differ at rounding level: too many (seed {rnd.Seed})");
        return $"{what}: {draws} draws over {cases} situations equal the float64 reference ({nearBoundary} at rounding level; seed {rnd.Seed})";
    }
}
