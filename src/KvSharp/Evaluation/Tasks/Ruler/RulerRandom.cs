using System.Globalization;

namespace KvSharp.Evaluation.Tasks.Ruler;

/// <summary>The random draws of RULER's generators, from one seeded <see cref="Random"/> (deterministic across runs).</summary>
public sealed class RulerRandom
{
    private readonly Random _random;

    /// <summary>A generator seeded with <paramref name="seed"/>.</summary>
    public RulerRandom(int seed) { _random = new Random(seed); }

    /// <summary>Integer in [<paramref name="min"/>, <paramref name="max"/>).</summary>
    public int Next(int min, int max) => _random.Next(min, max);

    /// <summary>Uniform in [0, 1).</summary>
    public double NextDouble() => _random.NextDouble();

    /// <summary>A 7-digit number (RULER's generate_random_number).</summary>
    public string Number() => _random.Next(1_000_000, 10_000_000).ToString(CultureInfo.InvariantCulture);

    /// <summary>A random version-4 UUID in lower-case 8-4-4-4-12 form.</summary>
    public string Uuid()
    {
        Span<byte> b = stackalloc byte[16];
        _random.NextBytes(b);
        b[6] = (byte)((b[6] & 0x0F) | 0x40); // version 4
        b[8] = (byte)((b[8] & 0x3F) | 0x80); // RFC 4122 variant
        string h = Convert.ToHexStringLower(b);
        return $"{h[..8]}-{h[8..12]}-{h[12..16]}-{h[16..20]}-{h[20..]}";
    }

    /// <summary>A random element.</summary>
    public T Choice<T>(IReadOnlyList<T> items) => items[_random.Next(items.Count)];

    /// <summary><paramref name="count"/> distinct elements in random order (Python's random.sample).</summary>
    public List<T> Sample<T>(IReadOnlyList<T> items, int count)
    {
        if (count > items.Count) throw new KvSharpException($"cannot draw {count} distinct items from {items.Count}");
        var pool = items.ToList();
        for (int i = 0; i < count; i++)
        {
            int j = _random.Next(i, pool.Count);
            (pool[i], pool[j]) = (pool[j], pool[i]);
        }
        return pool.GetRange(0, count);
    }

    /// <summary>Shuffles <paramref name="items"/> in place.</summary>
    public void Shuffle<T>(IList<T> items)
    {
        for (int i = items.Count - 1; i > 0; i--)
        {
            int j = _random.Next(i + 1);
            (items[i], items[j]) = (items[j], items[i]);
        }
    }

    /// <summary><paramref name="length"/> random upper-case letters (variable names of variable tracking).</summary>
    public string Letters(int length, bool upper = true)
    {
        var c = new char[length];
        for (int i = 0; i < length; i++) c[i] = (char)((upper ? 'A' : 'a') + _random.Next(26));
        return new string(c);
    }
}
