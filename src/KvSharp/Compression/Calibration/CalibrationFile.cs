namespace KvSharp.Compression.Calibration;

/// <summary>What the calibrations share: atomic file writes and the calibration text's windows.</summary>
public static class CalibrationFile
{
    /// <summary>Writes <paramref name="content"/> to a temporary file beside <paramref name="path"/>, then renames it over it (no half-written file is ever seen).</summary>
    public static void WriteAtomically(string path, string content)
    {
        ArgumentNullException.ThrowIfNull(path);
        string full = Path.GetFullPath(path);
        string temp = full + ".tmp";
        File.WriteAllText(temp, content);
        File.Move(temp, full, overwrite: true);
    }

    /// <summary>
    /// The calibration text: a file, or a folder whose <c>*.txt</c> files are joined in name order (blank line
    /// between), e.g. ../shared/data/paul_graham_essays.
    /// </summary>
    /// <exception cref="KvSharpException">Neither a file nor a folder with text files.</exception>
    public static string ReadText(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (File.Exists(path)) return File.ReadAllText(path);
        if (Directory.Exists(path))
        {
            var files = Directory.GetFiles(path, "*.txt").Order(StringComparer.Ordinal).ToArray();
            if (files.Length == 0) throw new KvSharpException($"calibration text '{path}': the folder holds no *.txt files");
            return string.Join("\n\n", files.Select(File.ReadAllText));
        }
        throw new KvSharpException($"calibration text '{path}': no such file or folder");
    }

    /// <summary>
    /// Up to <paramref name="count"/> non-overlapping windows of <paramref name="length"/> tokens of
    /// <paramref name="tokens"/> (a shorter text gives one shorter window), chosen among all of them by a shuffle seeded
    /// with <paramref name="seed"/>, returned in text order.
    /// </summary>
    /// <exception cref="KvSharpException">The text has fewer than <paramref name="minimum"/> tokens.</exception>
    public static int[][] Windows(IReadOnlyList<int> tokens, int count, int length, int seed, int minimum = 8)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (count < 1 || length < 1) throw new ArgumentOutOfRangeException(nameof(count), $"{count} windows of {length} tokens");
        if (tokens.Count < minimum) throw new KvSharpException($"calibration text: {tokens.Count} tokens, at least {minimum} needed");
        if (tokens.Count <= length) return [tokens.ToArray()];
        int available = tokens.Count / length;
        var starts = Enumerable.Range(0, available).ToArray();
        new Random(seed).Shuffle(starts);
        return starts.Take(count).Order().Select(w => tokens.Skip(w * length).Take(length).ToArray()).ToArray();
    }
}
