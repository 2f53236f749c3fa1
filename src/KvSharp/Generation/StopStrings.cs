namespace KvSharp.Generation;

/// <summary>What <see cref="StopStringMatcher.Push"/> found after one more piece of text.</summary>
/// <param name="SafeText">Text that can be shown now: it cannot be part of a stop string.</param>
/// <param name="Stopped">Whether a stop string completed; generation should end and the stop string is not shown.</param>
/// <param name="StopString">The stop string that completed, when <paramref name="Stopped"/>.</param>
public readonly record struct StopStringResult(string SafeText, bool Stopped, string? StopString);

/// <summary>
/// Watches streamed text for stop strings. Generated text arrives in pieces (one decoded token each) and a stop
/// string may span several; the matcher holds back the end of the text that could still begin a stop string, so
/// the stop string itself is never printed, and releases it once it can no longer match (or at <see cref="Flush"/>).
/// When several stop strings could match, the one that completes first in the text wins (then the longest), so
/// the outcome does not depend on how the text was split into pieces. Comparison is ordinal.
/// </summary>
public sealed class StopStringMatcher
{
    private readonly string[] _stops;
    private string _held = "";

    /// <summary>Creates a matcher; empty stop strings are rejected because they would match before any text.</summary>
    public StopStringMatcher(IEnumerable<string> stopStrings)
    {
        ArgumentNullException.ThrowIfNull(stopStrings);
        _stops = stopStrings.Distinct(StringComparer.Ordinal).ToArray();
        if (_stops.Any(string.IsNullOrEmpty)) throw new KvSharpException("--stop strings must not be empty");
    }

    /// <summary>The stop strings being watched.</summary>
    public IReadOnlyList<string> StopStrings => _stops;

    /// <summary>Whether a stop string has completed; later pushes are refused.</summary>
    public bool Stopped { get; private set; }

    /// <summary>Text currently held back because it might be the start of a stop string.</summary>
    public string Pending => _held;

    /// <summary>Adds the next piece of text and says what may be shown and whether a stop string completed.</summary>
    public StopStringResult Push(string piece)
    {
        ArgumentNullException.ThrowIfNull(piece);
        if (Stopped) throw new InvalidOperationException("A stop string has already matched.");
        if (_stops.Length == 0) return new StopStringResult(piece, false, null);

        string text = _held + piece;
        int bestStart = -1, bestEnd = int.MaxValue;
        string? best = null;
        foreach (var stop in _stops)
        {
            int at = text.IndexOf(stop, StringComparison.Ordinal);
            if (at < 0) continue;
            int end = at + stop.Length;
            if (end < bestEnd || (end == bestEnd && at < bestStart))
            {
                bestStart = at; bestEnd = end; best = stop;
            }
        }
        if (best != null)
        {
            Stopped = true;
            _held = "";
            return new StopStringResult(text[..bestStart], true, best);
        }

        int hold = HeldSuffixLength(text);
        _held = text[^hold..];
        return new StopStringResult(text[..^hold], false, null);
    }

    /// <summary>Releases the held-back text when generation ends without a stop string (nothing after a stop).</summary>
    public string Flush()
    {
        string rest = _held;
        _held = "";
        return rest;
    }

    /// <summary>Length of the longest suffix of <paramref name="text"/> that is a proper prefix of some stop string.</summary>
    private int HeldSuffixLength(string text)
    {
        int longest = 0;
        foreach (var stop in _stops)
        {
            for (int len = Math.Min(stop.Length - 1, text.Length); len > longest; len--)
            {
                if (text.AsSpan(text.Length - len).SequenceEqual(stop.AsSpan(0, len))) { longest = len; break; }
            }
        }
        return longest;
    }
}
