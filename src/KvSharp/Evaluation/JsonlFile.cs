using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace KvSharp.Evaluation;

/// <summary>JSON-lines files: atomic whole-file writes and appends of whole lines.</summary>
public static class JsonlFile
{
    /// <summary>Serializer options of every file the harness writes: snake_case names, readable non-ASCII, no indentation.</summary>
    public static JsonSerializerOptions Options { get; } = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        WriteIndented = false,
    };

    /// <summary>Writes <paramref name="lines"/> to <paramref name="path"/> through a temporary file and a rename.</summary>
    public static void WriteAll(string path, IEnumerable<string> lines)
    {
        var sb = new StringBuilder();
        foreach (var line in lines) sb.Append(line).Append('\n');
        WriteAtomically(path, sb.ToString());
    }

    /// <summary>Writes <paramref name="text"/> to <paramref name="path"/> through a temporary file and a rename.</summary>
    public static void WriteAtomically(string path, string text) => WriteAtomically(path, new UTF8Encoding(false).GetBytes(text));

    /// <summary>Writes <paramref name="bytes"/> to <paramref name="path"/> through a temporary file and a rename.</summary>
    public static void WriteAtomically(string path, byte[] bytes)
    {
        string full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        string temp = full + ".tmp-" + Environment.ProcessId;
        File.WriteAllBytes(temp, bytes);
        File.Move(temp, full, overwrite: true);
    }

    /// <summary>
    /// Appends one line and flushes it to disk, so a killed run loses at most the line being written
    /// (a torn last line is skipped when the file is read back).
    /// </summary>
    public static void Append(string path, string line)
    {
        string full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        using var stream = new FileStream(full, FileMode.Append, FileAccess.Write, FileShare.Read);
        var bytes = Encoding.UTF8.GetBytes(line + "\n");
        stream.Write(bytes);
        stream.Flush(flushToDisk: true);
    }
}
