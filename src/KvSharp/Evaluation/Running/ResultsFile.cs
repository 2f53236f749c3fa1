using System.Text.Json;

namespace KvSharp.Evaluation.Running;

/// <summary>
/// The results of a sweep as JSON lines, one <see cref="CellResult"/> per finished cell, appended as each finishes
/// so an interrupted sweep resumes where it stopped.
/// </summary>
public static class ResultsFile
{
    /// <summary>
    /// Reads the cells of <paramref name="path"/> (none when it does not exist). A torn last line (a run killed while
    /// writing) is skipped; a malformed line elsewhere is an error naming the file and line.
    /// </summary>
    public static IReadOnlyList<CellResult> Read(string path)
    {
        if (!File.Exists(path)) return [];
        var lines = File.ReadAllLines(path);
        var cells = new List<CellResult>();
        for (int i = 0; i < lines.Length; i++)
        {
            if (string.IsNullOrWhiteSpace(lines[i])) continue;
            try
            {
                cells.Add(JsonSerializer.Deserialize<CellResult>(lines[i], JsonlFile.Options) ?? throw new JsonException("null"));
            }
            catch (JsonException e)
            {
                if (i == lines.Length - 1) break; // torn by an interrupted append: the cell reruns
                throw new KvSharpException($"{path}:{i + 1}: not a result line ({e.Message})", e);
            }
        }
        return cells;
    }

    /// <summary>
    /// Reads the cells of <paramref name="path"/> before a sweep resumes appending to it; a torn last line is removed
    /// from the file (rewritten atomically) so the next append starts on a line of its own.
    /// </summary>
    public static IReadOnlyList<CellResult> Resume(string path)
    {
        var cells = Read(path);
        if (!File.Exists(path)) return cells;
        var lines = File.ReadAllLines(path).Where(l => !string.IsNullOrWhiteSpace(l)).ToList();
        if (lines.Count != cells.Count || !File.ReadAllText(path).EndsWith('\n'))
            JsonlFile.WriteAll(path, cells.Select(c => JsonSerializer.Serialize(c, JsonlFile.Options)));
        return cells;
    }

    /// <summary>Appends <paramref name="cell"/> as one line.</summary>
    public static void Append(string path, CellResult cell) => JsonlFile.Append(path, JsonSerializer.Serialize(cell, JsonlFile.Options));
}
