using System.Globalization;
using KvSharp.Compute.Cpu;
using KvSharp.Formats;
using KvSharp.Formats.Gguf;
using KvSharp.Models.Loading;

namespace KvSharp.Bench.EndToEnd;

/// <summary>
/// `dotnet run -c Release --project bench/KvSharp.Bench -- e2e [--quick]`: prefill and decode tokens/s of
/// KvSharp and llama.cpp on the same GGUF files, in one run, on this machine. Real models are converted to
/// GGUF in each weight type; dummy shapes (SmolLM2-135M, Qwen2.5-0.5B) get deterministic random weights.
/// Prints a markdown table for docs/benchmarks.md.
/// </summary>
internal static class EndToEndComparison
{
    private sealed record Case(string Name, Func<GgmlType, string> Build, int Prompt, int Decode);

    public static void Run(string[] args)
    {
        bool quick = args.Contains("--quick");
        int threads = Environment.ProcessorCount;
        CpuThreads.Count = threads;
        string shared = FindShared();
        string work = Path.Combine(Path.GetTempPath(), "kvsharp-e2e");
        Directory.CreateDirectory(work);

        string Real(string name, string source, GgmlType type)
        {
            string path = Path.Combine(work, $"{name}-{type}.gguf");
            if (File.Exists(path)) return path;
            using var w = ModelLoader.Load(source);
            using var converted = WeightConverter.Convert(w, type);
            GgufWriter.WriteModel(converted, path, source.EndsWith(".gguf", StringComparison.Ordinal) ? source : null, name);
            return path;
        }
        string Dummy(string name, string config, GgmlType type)
        {
            string path = Path.Combine(work, $"{name}-{type}.gguf");
            if (File.Exists(path)) return path;
            using var w = DummyWeights.Create(HfConfigReader.Read(config), type, seed: 1);
            GgufWriter.WriteModel(w, path, name: name);
            return path;
        }
        string configs = Path.Combine(LongContextDecodeBench.FindRepo(), "bench", "configs");
        var cases = new List<Case>
        {
            new("stories260K (real)", t => Real("stories260k", Path.Combine(shared, "models", "stories260k", "stories260K.gguf"), t), 128, 256),
            new("kvsharp-needle-16m (real), 4K context", t => Real("needle16m", Path.Combine(shared, "models", "kvsharp-needle-16m"), t), quick ? 512 : 4000, 64),
            new("SmolLM2-135M shape (dummy)", t => Dummy("smollm2-135m", Path.Combine(configs, "smollm2-135m.json"), t), quick ? 64 : 256, quick ? 16 : 32),
            new("Qwen2.5-0.5B shape (dummy)", t => Dummy("qwen2.5-0.5b", Path.Combine(configs, "qwen2.5-0.5b.json"), t), quick ? 64 : 256, quick ? 8 : 16),
        };
        var types = new[] { GgmlType.F32, GgmlType.F16, GgmlType.Q8_0 };

        Console.WriteLine($"threads: {threads}; {(quick ? "quick" : "full")} run; {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        Console.WriteLine();
        Console.WriteLine("| model | weights | prompt | KvSharp prefill tok/s | llama.cpp prefill tok/s | ratio | KvSharp decode tok/s | llama.cpp decode tok/s | ratio |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|");
        foreach (var c in cases)
        {
            foreach (var type in types)
            {
                string path;
                try { path = c.Build(type); }
                catch (Exception e) when (e is KvSharpException or NotSupportedException)
                {
                    Console.WriteLine($"| {c.Name} | {type} | skipped: {e.Message} |");
                    continue;
                }
                // Interleave the engines so slow drift of the machine affects both alike.
                var ours = KvSharpRunner.Measure(path, c.Prompt, c.Decode);
                var peer = LlamaCppPeer.Measure(path, c.Prompt, c.Decode, threads);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {c.Name} | {type} | {c.Prompt} | {ours.PrefillTokensPerSecond:F1} | {peer.PrefillTokensPerSecond:F1} | {ours.PrefillTokensPerSecond / peer.PrefillTokensPerSecond:F2} | {ours.DecodeTokensPerSecond:F1} | {peer.DecodeTokensPerSecond:F1} | {ours.DecodeTokensPerSecond / peer.DecodeTokensPerSecond:F2} |"));
            }
        }
    }

    internal static string FindShared() => Path.GetFullPath(Path.Combine(LongContextDecodeBench.FindRepo(), "..", "shared"));
}
