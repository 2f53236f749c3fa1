using System.CommandLine;
using KvSharp.Cli.Reports;
using KvSharp.Evaluation;
using KvSharp.Evaluation.Reports;
using KvSharp.Evaluation.Running;

namespace KvSharp.Cli.Commands;

/// <summary><c>kvsharp report results.jsonl</c>: the markdown table and PNG plots of a results file.</summary>
internal static class ReportCommand
{
    public static Command Create(CliContext context)
    {
        var results = new Argument<string>("results") { Description = "Results file written by kvsharp eval" };
        var outDir = new Option<string?>("--out-dir") { Description = "Where the table (NAME.md) and plots (NAME-MODEL-TASK-keep.png, -bytes.png) go (default: beside the results)", HelpName = "DIR" };
        var noPlots = new Option<bool>("--no-plots") { Description = "Write only the markdown table" };
        var command = new Command("report", "Markdown table and PNG plots (score vs keep ratio, score vs KV bytes) of an eval results file");
        command.Arguments.Add(results);
        command.Options.Add(outDir);
        command.Options.Add(noPlots);
        command.SetAction(parse =>
        {
            string path = parse.GetValue(results)!;
            if (!File.Exists(path)) throw new UsageException($"'{path}' does not exist");
            var cells = ResultsFile.Read(path);
            if (cells.Count == 0) throw new KvSharpException($"{path}: no results in the file");
            string dir = parse.GetValue(outDir) ?? Path.GetDirectoryName(Path.GetFullPath(path))!;
            string stem = Path.GetFileNameWithoutExtension(path);
            string table = ResultsTable.Markdown(cells);
            string tablePath = Path.Combine(dir, stem + ".md");
            JsonlFile.WriteAtomically(tablePath, table);
            context.Output.Write(table);
            context.Output.WriteLine($"table: {tablePath}");
            if (!parse.GetValue(noPlots))
                foreach (var png in ResultPlots.Write(cells, dir, stem)) context.Output.WriteLine($"plot: {png}");
            return 0;
        });
        return command;
    }
}
