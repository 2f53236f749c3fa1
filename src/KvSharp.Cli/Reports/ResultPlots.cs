using KvSharp.Evaluation;
using KvSharp.Evaluation.Running;
using ScottPlot;

namespace KvSharp.Cli.Reports;

/// <summary>
/// The PNG plots of a results file, one pair per (model, task): score against keep ratio (one line per press, the
/// full cache as a dashed horizontal line) and score against KV bytes after compression.
/// </summary>
internal static class ResultPlots
{
    /// <summary>Writes the plots into <paramref name="directory"/> as <c>{stem}-{model}-{task}-keep.png</c> / <c>-bytes.png</c>; returns their paths.</summary>
    public static IReadOnlyList<string> Write(IReadOnlyList<CellResult> cells, string directory, string stem)
    {
        var written = new List<string>();
        foreach (var group in cells.GroupBy(c => (c.Model, c.Task)).OrderBy(g => g.Key.Model, StringComparer.Ordinal).ThenBy(g => g.Key.Task, StringComparer.Ordinal))
        {
            string name = $"{stem}-{Safe(group.Key.Model)}-{Safe(group.Key.Task)}";
            var presses = group.GroupBy(c => c.Press).OrderBy(g => g.Key == "none" ? 0 : 1).ThenBy(g => g.Key, StringComparer.Ordinal).ToList();

            var keep = new Plot();
            foreach (var press in presses)
            {
                var points = press.OrderBy(c => c.KeepRatio).ToList();
                if (press.Key == "none" && points.Count == 1)
                {
                    var line = keep.Add.HorizontalLine(points[0].Score);
                    line.LinePattern = LinePattern.Dashed;
                    line.LegendText = "full cache";
                    continue;
                }
                var scatter = keep.Add.Scatter(points.Select(c => c.KeepRatio).ToArray(), points.Select(c => c.Score).ToArray());
                scatter.LegendText = press.Key;
            }
            Decorate(keep, $"{group.Key.Model} · {group.Key.Task}", "keep ratio");
            keep.Axes.SetLimitsX(0, 1.05);
            written.Add(Save(keep, Path.Combine(directory, name + "-keep.png")));

            var bytes = new Plot();
            foreach (var press in presses)
            {
                var points = press.OrderBy(c => c.KvBytesAfter).ToList();
                var scatter = bytes.Add.Scatter(points.Select(c => c.KvBytesAfter / 1048576.0).ToArray(), points.Select(c => c.Score).ToArray());
                scatter.LegendText = press.Key == "none" ? "full cache" : press.Key;
            }
            Decorate(bytes, $"{group.Key.Model} · {group.Key.Task}", "KV cache after compression (MiB per sample)");
            written.Add(Save(bytes, Path.Combine(directory, name + "-bytes.png")));
        }
        return written;
    }

    private static void Decorate(Plot plot, string title, string xLabel)
    {
        plot.Title(title);
        plot.XLabel(xLabel);
        plot.YLabel("score");
        plot.Axes.SetLimitsY(0, 1.05);
        plot.ShowLegend(Alignment.LowerRight);
    }

    private static string Save(Plot plot, string path)
    {
        JsonlFile.WriteAtomically(path, plot.GetImageBytes(800, 500, ImageFormat.Png));
        return path;
    }

    private static string Safe(string s) => new(s.Select(c => char.IsLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_').ToArray());
}
