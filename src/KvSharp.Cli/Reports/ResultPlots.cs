using KvSharp.Evaluation;
using KvSharp.Evaluation.Running;
using ScottPlot;

namespace KvSharp.Cli.Reports;

/// <summary>
/// The PNG plots of a results file, one set per (model, task): score against keep ratio (one line per press, the
/// full cache as a dashed horizontal line), score against KV bytes after compression, and for language-model tasks
/// KL(full ‖ compressed) against keep ratio. A press keeps its colour and marker in every figure of a report (20
/// colours × 8 markers), and the legend sits beside the plot, so figures with many presses stay readable.
/// </summary>
internal static partial class ResultPlots
{
    private static readonly MarkerShape[] Markers =
    [
        MarkerShape.FilledCircle, MarkerShape.FilledSquare, MarkerShape.FilledTriangleUp, MarkerShape.FilledDiamond,
        MarkerShape.OpenCircle, MarkerShape.OpenSquare, MarkerShape.OpenTriangleDown, MarkerShape.Eks,
    ];

    /// <summary>
    /// Writes the plots into <paramref name="directory"/> as <c>{stem}-{model}-{task}-keep.png</c>, <c>-bytes.png</c>
    /// and (with KL) <c>-kl.png</c>; returns their paths.
    /// </summary>
    public static IReadOnlyList<string> Write(IReadOnlyList<CellResult> cells, string directory, string stem)
    {
        var styles = Styles(cells);
        var written = new List<string>();
        foreach (var group in cells.GroupBy(c => (c.Model, c.Task)).OrderBy(g => g.Key.Model, StringComparer.Ordinal).ThenBy(g => g.Key.Task, StringComparer.Ordinal))
        {
            string name = $"{stem}-{Safe(group.Key.Model)}-{Safe(group.Key.Task)}";
            string title = $"{group.Key.Model} · {group.Key.Task}";
            var presses = group.GroupBy(c => c.Press).OrderBy(g => g.Key == "none" ? 0 : 1).ThenBy(g => g.Key, StringComparer.Ordinal).ToList();
            string yLabel = group.All(c => c.Top1Agreement != null) ? "top-1 agreement with the full cache" : "score";
            double low = LowerLimit(group.Select(c => c.Score));

            var keep = new Plot();
            foreach (var press in presses)
                AddSeries(keep, press.Key, press.OrderBy(c => c.KeepRatio).Select(c => (c.KeepRatio, c.Score)).ToList(), styles, fullCacheLine: true);
            Decorate(keep, title, "keep ratio", yLabel, low, 1 + ((1 - low) * 0.05));
            keep.Axes.SetLimitsX(0, 1.05);
            written.Add(Save(keep, Path.Combine(directory, name + "-keep.png")));

            var bytes = new Plot();
            foreach (var press in presses)
                AddSeries(bytes, press.Key, press.OrderBy(c => c.KvBytesAfter).Select(c => (c.KvBytesAfter / 1048576.0, c.Score)).ToList(), styles, fullCacheLine: false);
            Decorate(bytes, title, "KV cache after compression (MiB per sample)", yLabel, low, 1 + ((1 - low) * 0.05));
            written.Add(Save(bytes, Path.Combine(directory, name + "-bytes.png")));

            if (group.Any(c => c.Kl is > 0))
            {
                var kl = new Plot();
                // The axis fits the presses swept over keep ratios; a keep-less press far above them is named, not drawn.
                var swept = group.Where(c => !c.KeepAchieved && c.Kl != null).ToList();
                double top = (swept.Count > 0 ? swept : group.ToList()).Max(c => c.Kl ?? 0) * 1.05;
                foreach (var press in presses.Where(p => p.Key != "none"))
                {
                    var points = press.Where(c => c.Kl != null).OrderBy(c => c.KeepRatio).Select(c => (c.KeepRatio, c.Kl!.Value)).ToList();
                    var off = points.Where(p => p.Value > top).ToList();
                    AddSeries(kl, press.Key, points.Except(off).ToList(), styles, fullCacheLine: false);
                    if (off.Count > 0)
                        kl.Add.Scatter(Array.Empty<double>(), Array.Empty<double>()).LegendText = $"{Label(press.Key)}: KL {off.Max(p => p.Value):0.###} (off the chart)";
                }
                Decorate(kl, title, "keep ratio (keep-less presses: share of bytes kept)", "KL(full ‖ compressed), nats per token", 0, top);
                kl.Axes.SetLimitsX(0, 1.05);
                written.Add(Save(kl, Path.Combine(directory, name + "-kl.png")));
            }
        }
        return written;
    }

    /// <summary>One colour and marker per press of the whole results file, in name order (the full cache black).</summary>
    private static Dictionary<string, (Color Color, MarkerShape Marker)> Styles(IReadOnlyList<CellResult> cells)
    {
        var palette = new ScottPlot.Palettes.Category20();
        var styles = new Dictionary<string, (Color, MarkerShape)>(StringComparer.Ordinal) { ["none"] = (Colors.Black, MarkerShape.FilledCircle) };
        int i = 0;
        foreach (var press in cells.Select(c => c.Press).Where(p => p != "none").Distinct().Order(StringComparer.Ordinal))
        {
            // Category20 pairs dark and light shades of one hue: the first 10 presses take the dark ones. Colours cycle every
            // 20 presses and markers every 8, so no two of the first 40 share both.
            styles[press] = (palette.GetColor((2 * i % 20) + (i / 10 % 2)), Markers[i % Markers.Length]); // the dark shade of each pair first
            i++;
        }
        return styles;
    }

    private static void AddSeries(Plot plot, string press, IReadOnlyList<(double X, double Y)> points, Dictionary<string, (Color Color, MarkerShape Marker)> styles, bool fullCacheLine)
    {
        if (points.Count == 0) return;
        var (color, marker) = styles[press];
        if (press == "none" && fullCacheLine && points.Count == 1)
        {
            var line = plot.Add.HorizontalLine(points[0].Y);
            line.LinePattern = LinePattern.Dashed;
            line.Color = color;
            line.LegendText = "full cache";
            return;
        }
        var scatter = plot.Add.Scatter(points.Select(p => p.X).ToArray(), points.Select(p => p.Y).ToArray());
        scatter.LegendText = press == "none" ? "full cache" : Label(press);
        scatter.Color = color;
        scatter.MarkerShape = marker;
        scatter.MarkerSize = 8;
        scatter.LineWidth = 1.5f;
    }

    /// <summary>A press as the legend names it: calibration files by their base name, not their path.</summary>
    private static string Label(string press) => FilePath().Replace(press, "file=$1");

    [System.Text.RegularExpressions.GeneratedRegex(@"file=(?:[^,:()+]*/)?([^,:()+/]+?)(?:\.json|\.ya?ml)?(?=$|[,:()+])")]
    private static partial System.Text.RegularExpressions.Regex FilePath();

    // Scores near 1 (language-model agreement) would be a flat band on a 0..1 axis: zoom to their range, in steps of 0.05.
    private static double LowerLimit(IEnumerable<double> scores)
    {
        double min = scores.DefaultIfEmpty(0).Min();
        return min > 0.5 ? Math.Floor((min - 0.02) * 20) / 20 : 0;
    }

    private static void Decorate(Plot plot, string title, string xLabel, string yLabel, double yLow, double yHigh)
    {
        plot.Title(title);
        plot.XLabel(xLabel);
        plot.YLabel(yLabel);
        plot.Axes.SetLimitsY(yLow, yHigh > yLow ? yHigh : yLow + 1);
        plot.ShowLegend(Edge.Right);
    }

    private static string Save(Plot plot, string path)
    {
        JsonlFile.WriteAtomically(path, plot.GetImageBytes(1100, 600, ImageFormat.Png));
        return path;
    }

    private static string Safe(string s) => new(s.Select(c => char.IsLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_').ToArray());
}
