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
            string yLabel = group.All(c => c.Top1Agreement != null) ? "top-1 agreement with the full cache" : "score";
            double low = LowerLimit(group.Select(c => c.Score));
            Decorate(keep, $"{group.Key.Model} · {group.Key.Task}", "keep ratio", yLabel, low);
            keep.Axes.SetLimitsX(0, 1.05);
            written.Add(Save(keep, Path.Combine(directory, name + "-keep.png")));

            var bytes = new Plot();
            foreach (var press in presses)
            {
                var points = press.OrderBy(c => c.KvBytesAfter).ToList();
                var scatter = bytes.Add.Scatter(points.Select(c => c.KvBytesAfter / 1048576.0).ToArray(), points.Select(c => c.Score).ToArray());
                scatter.LegendText = press.Key == "none" ? "full cache" : press.Key;
            }
            Decorate(bytes, $"{group.Key.Model} · {group.Key.Task}", "KV cache after compression (MiB per sample)", yLabel, low);
            written.Add(Save(bytes, Path.Combine(directory, name + "-bytes.png")));
        }
        return written;
    }

    // Scores near 1 (language-model agreement) would be a flat band on a 0..1 axis: zoom to their range, in steps of 0.05.
    private static double LowerLimit(IEnumerable<double> scores)
    {
        double min = scores.DefaultIfEmpty(0).Min();
        return min > 0.5 ? Math.Floor((min - 0.02) * 20) / 20 : 0;
    }

    private static void Decorate(Plot plot, string title, string xLabel, string yLabel, double yLow)
    {
        plot.Title(title);
        plot.XLabel(xLabel);
        plot.YLabel(yLabel);
        plot.Axes.SetLimitsY(yLow, 1 + ((1 - yLow) * 0.05));
        plot.ShowLegend(Alignment.LowerRight);
    }

    private static string Save(Plot plot, string path)
    {
        JsonlFile.WriteAtomically(path, plot.GetImageBytes(800, 500, ImageFormat.Png));
        return path;
    }

    private static string Safe(string s) => new(s.Select(c => char.IsLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_').ToArray());
}
