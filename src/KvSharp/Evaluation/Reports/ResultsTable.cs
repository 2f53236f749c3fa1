using System.Globalization;
using System.Text;
using KvSharp.Evaluation.Running;

namespace KvSharp.Evaluation.Reports;

/// <summary>The markdown table of a results file: one row per cell; columns that no cell fills are left out.</summary>
public static class ResultsTable
{
    /// <summary>The table of <paramref name="cells"/>, sorted by model, task, press and keep ratio.</summary>
    public static string Markdown(IReadOnlyList<CellResult> cells)
    {
        var rows = cells.OrderBy(c => c.Model, StringComparer.Ordinal).ThenBy(c => c.Task, StringComparer.Ordinal)
            .ThenBy(c => c.Press == "none" ? 0 : 1).ThenBy(c => c.Press, StringComparer.Ordinal).ThenByDescending(c => c.KeepRatio).ToList();
        var columns = new List<(string Header, Func<CellResult, string> Value)>
        {
            ("model", c => c.Model),
            ("task", c => c.Task),
            ("press", c => c.Press),
            ("keep", c => c.KeepAchieved ? $"({F(c.KeepRatio, "0.###")})" : F(c.KeepRatio, "0.##")),
            ("KV cache", c => c.KvCache),
            ("samples", c => c.Samples.ToString(CultureInfo.InvariantCulture)),
            ("score", c => F(c.Score, "0.000")),
        };
        if (rows.Any(c => c.BaselineAgreement != null))
        {
            columns.Add(("complete", c => F(c.ExactFraction, "0.000")));
            columns.Add(("baseline complete", c => c.BaselineExactFraction is { } b ? F(b, "0.000") : ""));
            columns.Add(("same answer as baseline", c => c.BaselineAgreement is { } a ? F(a, "0.000") : ""));
        }
        if (rows.Any(c => c.TaskScores.Count > 1))
            columns.Add(("by sub-task", c => c.TaskScores.Count > 1 ? string.Join(", ", c.TaskScores.Select(p => $"{p.Key} {F(p.Value, "0.00")}")) : ""));
        if (rows.Any(c => c.RougeL != null))
        {
            columns.Add(("ROUGE-1", c => c.Rouge1 is { } r ? F(r, "0.000") : ""));
            columns.Add(("ROUGE-2", c => c.Rouge2 is { } r ? F(r, "0.000") : ""));
            columns.Add(("ROUGE-L", c => c.RougeL is { } r ? F(r, "0.000") : ""));
        }
        if (rows.Any(c => c.Perplexity != null))
        {
            columns.Add(("perplexity", c => c.Perplexity is { } p ? F(p, "0.000") : ""));
            columns.Add(("full-cache perplexity", c => c.ReferencePerplexity is { } p ? F(p, "0.000") : ""));
            columns.Add(("KL (nats)", c => c.Kl is { } k ? F(k, "0.0000") : ""));
            columns.Add(("top-1 agreement", c => c.Top1Agreement is { } t ? F(t, "0.000") : ""));
        }
        columns.Add(("context tokens", c => F(c.ContextTokens, "0")));
        columns.Add(("KV bytes before → after", c => $"{Bytes(c.KvBytesBefore)} → {Bytes(c.KvBytesAfter)}"));
        columns.Add(("prefill s", c => F(c.PrefillSeconds, "0.0")));
        columns.Add(("compress s", c => F(c.CompressSeconds, "0.00")));
        columns.Add(("decode s", c => F(c.DecodeSeconds, "0.0")));
        columns.Add(("peak KV", c => c.PeakKvBytes > 0 ? Bytes(c.PeakKvBytes) : ""));
        columns.Add(("peak RSS MiB (+ over cell start)", c => c.PeakRssBytes == 0 ? ""
            : F(c.PeakRssBytes / 1048576.0, "0") + (c.PeakRssPerCell ? $" (+{F(c.PeakRssDeltaBytes / 1048576.0, "0")})" : " (process)")));

        var sb = new StringBuilder();
        sb.Append("| ").AppendJoin(" | ", columns.Select(c => c.Header)).Append(" |\n");
        sb.Append('|').AppendJoin("", columns.Select(_ => "---|")).Append('\n');
        foreach (var row in rows)
            sb.Append("| ").AppendJoin(" | ", columns.Select(c => c.Value(row).Replace("|", "\\|", StringComparison.Ordinal))).Append(" |\n");
        return sb.ToString();
    }

    /// <summary>Bytes in binary units (B, KiB, MiB, GiB) with two decimals.</summary>
    public static string Bytes(double bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB"];
        int u = 0;
        while (bytes >= 1024 && u < units.Length - 1) { bytes /= 1024; u++; }
        return u == 0 ? F(bytes, "0") + " B" : F(bytes, "0.00") + " " + units[u];
    }

    private static string F(double value, string format) => value.ToString(format, CultureInfo.InvariantCulture);
}
