using System.Globalization;
using KvSharp.Compute.Cpu;
using KvSharp.Formats;
using KvSharp.Formats.Gguf;
using KvSharp.Models.Loading;

namespace KvSharp.Bench.EndToEnd;

/// <summary>
/// `dotnet run -c Release --project bench/KvSharp.Bench -- numerics [threads]`: what <see cref="CpuNumerics.LlamaCpp"/>
/// costs. Prefill and decode tokens/s of the Fast and the llama.cpp arithmetic on stories260K (F32, the model it is exact
/// on) and a SmolLM2-135M-shaped model with deterministic random F32 and F16 weights, measured back to back in one
/// process. Prints a markdown table for docs/benchmarks.md.
/// </summary>
internal static class NumericsBench
{
    public static void Run(string[] args)
    {
        if (args.Length > 1) CpuThreads.Count = int.Parse(args[1], CultureInfo.InvariantCulture);
        string work = Path.Combine(Path.GetTempPath(), "kvsharp-numerics");
        Directory.CreateDirectory(work);
        string Dummy(GgmlType type)
        {
            string path = Path.Combine(work, $"smollm2-135m-{type}.gguf");
            if (File.Exists(path)) return path;
            using var w = DummyWeights.Create(HfConfigReader.Read(Path.Combine(LongContextDecodeBench.FindRepo(), "bench", "configs", "smollm2-135m.json")), type, seed: 1);
            GgufWriter.WriteModel(w, path + ".tmp", name: "smollm2-135m");
            File.Move(path + ".tmp", path, overwrite: true);
            return path;
        }
        var cases = new (string Name, string Weights, Func<string> Path, int Prompt, int Decode)[]
        {
            ("stories260K", "F32", () => System.IO.Path.Combine(EndToEndComparison.FindShared(), "models", "stories260k", "stories260K.gguf"), 128, 256),
            ("SmolLM2-135M shape (dummy)", "F32", () => Dummy(GgmlType.F32), 64, 32),
            ("SmolLM2-135M shape (dummy)", "F16", () => Dummy(GgmlType.F16), 64, 32),
        };
        Console.WriteLine($"threads: {CpuThreads.Count}; {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC; best of {KvSharpRunner.Repetitions}");
        Console.WriteLine();
        Console.WriteLine("| model | weights | prompt | decode | Fast prefill tok/s | LlamaCpp prefill tok/s | ratio | Fast decode tok/s | LlamaCpp decode tok/s | ratio |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|");
        foreach (var c in cases)
        {
            string path = c.Path();
            var fast = KvSharpRunner.Measure(path, c.Prompt, c.Decode, CpuNumerics.Fast);
            var ggml = KvSharpRunner.Measure(path, c.Prompt, c.Decode, CpuNumerics.LlamaCpp);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {c.Name} | {c.Weights} | {c.Prompt} | {c.Decode} | {fast.PrefillTokensPerSecond:F1} | {ggml.PrefillTokensPerSecond:F1} | {ggml.PrefillTokensPerSecond / fast.PrefillTokensPerSecond:F2} | {fast.DecodeTokensPerSecond:F1} | {ggml.DecodeTokensPerSecond:F1} | {ggml.DecodeTokensPerSecond / fast.DecodeTokensPerSecond:F2} |"));
        }
    }
}
