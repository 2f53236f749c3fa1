namespace KvSharp.GpuTests.Checks;

/// <summary>Comparisons of device results with float64 references.</summary>
public static class Compare
{
    /// <summary>‖actual − expected‖ / ‖expected‖; fails on any NaN or infinity (an unwritten, poisoned element) or above <paramref name="tolerance"/>.</summary>
    public static string Relative(string what, ReadOnlySpan<float> actual, ReadOnlySpan<double> expected, double tolerance)
    {
        if (actual.Length != expected.Length) throw new CheckFailedException($"{what}: {actual.Length} values, expected {expected.Length}");
        double diff = 0, norm = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            if (!float.IsFinite(actual[i])) throw new CheckFailedException($"{what}: element {i} is {actual[i]} (never written or overflowed)");
            double d = actual[i] - expected[i];
            diff += d * d;
            norm += expected[i] * expected[i];
        }
        double rel = Math.Sqrt(diff) / Math.Max(Math.Sqrt(norm), 1e-30);
        if (!(rel <= tolerance)) throw new CheckFailedException($"{what}: relative error {rel:E2} exceeds {tolerance:E1}");
        return $"{what}: rel err {rel:E2}";
    }

    /// <summary>Every element equal (bit patterns of floats compared as values).</summary>
    public static string Exact(string what, ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        for (int i = 0; i < expected.Length; i++)
            if (actual[i] != expected[i] || float.IsNaN(actual[i]))
                throw new CheckFailedException($"{what}: element {i} is {actual[i]}, expected {expected[i]}");
        return $"{what}: exact";
    }

    /// <summary>‖actual − expected‖ / ‖expected‖ (the number <see cref="Relative"/> checks).</summary>
    public static double RelativeError(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected)
    {
        double diff = 0, norm = 0;
        for (int i = 0; i < actual.Length; i++) { diff += (actual[i] - expected[i]) * (actual[i] - expected[i]); norm += expected[i] * expected[i]; }
        return Math.Sqrt(diff / Math.Max(norm, 1e-60));
    }
}
