using KvSharp.Cache.Blocks;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.GpuTests.Bench;
using KvSharp.GpuTests.Checks;

// KvSharp's GPU checks and GPU benchmark, as a self-contained program for machines without .NET.
//   KvSharp.GpuTests selftest [--stories PATH] [--needle FOLDER] [--only NAME-PART|NAME-PART]
//   KvSharp.GpuTests bench [--config PATH] [--contexts 4096,32768] [--batch 8] [--batch-contexts 4096,32768] [--steps 64]
//                          [--prefill 4096,32768]
//   KvSharp.GpuTests bench-paged [--config PATH] [--contexts 4096,32768,131072] [--batch 1,8] [--steps 32]
//                                [--only NAME-PART|NAME-PART] [--claims off|measured|always] [--narrow-ffn on|off]
//                                [--fold-append on|off] [--early-tables on|off] [--repeats 3]
//                                (compressed device caches, each row the median of --repeats timed runs; --claims: the pipelined attention's block claims in batch steps,
//                                CudaPagedKernels.BlockClaims; --narrow-ffn: CudaKernels.NarrowFfnActivations; --fold-append:
//                                CudaPagedKernels.FuseBatchAppend; --early-tables: CudaPagedKernels.EarlyBatchTables)
//   KvSharp.GpuTests bench-gemv [--config PATH] [--batch 8] [--rounds 2] [--contexts 4096] [--steps 32]
//                                (batch products over every layer's own matrices, sequence, step; timeline builds)
//   KvSharp.GpuTests bench-kvzip [--config PATH] [--needle FOLDER] [--baseline OLD_paged_cache.cu] [--contexts 4096,32768]
//                                [--rows 16,512,2048] [--press-contexts 32768]   (statistics pass before/after, device KVzip press)
//   KvSharp.GpuTests bench-press [--needle FOLDER] [--contexts 2048,6000] [--presses "snapkv:keep=0.3;h2o:keep=0.3;..."]
//                                (ask's device presses vs the CPU presses of this machine, needle model)
//   KvSharp.GpuTests bench-sampling [--vocab 128256] [--repetitions 50] [--config PATH] [--tokens 256]
//                                (device sampler vs copy + CPU sampler; with --config also sampled decode,
//                                eager vs graph)
//   KvSharp.GpuTests compile FILE.cu ...   (NVRTC into the cubin cache ahead of a run: run several in parallel, one per file)
//   KvSharp.GpuTests kvsharp ARGS   (the kvsharp command line, e.g. kvsharp generate --device cuda ...)
string command = args.Length > 0 ? args[0] : "selftest";
if (command == "kvsharp") return KvSharp.Cli.Commands.KvSharpCommandLine.RunOnConsole(args[1..]);
string Option(string name, string fallback)
{
    int i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : fallback;
}
// A switch's value (default on); null, with a message, when it is neither on nor off.
bool? OnOff(string name)
{
    string value = Option(name, "on");
    if (value is "on" or "off") return value == "on";
    Console.Error.WriteLine($"unknown {name} '{value}' (on, off)");
    return null;
}

if (CudaDevice.UnavailableReason is { } reason)
{
    Console.WriteLine($"CUDA unavailable: {reason}");
    return 2;
}

switch (command)
{
    case "selftest":
        {
            Console.WriteLine($"device: {CudaDevice.Shared}");
            string stories = Option("--stories", Path.Combine("..", "shared", "models", "stories260k", "stories260K.gguf"));
            int passed = 0, failed = 0;
            string needle = Option("--needle", Path.Combine("models", "kvsharp-needle-16m"));
            string only = Option("--only", "");
            foreach (var (name, run) in GpuCheckList.All(stories, needle))
            {
                if (!only.Split('|').Any(o => name.Contains(o, StringComparison.Ordinal))) continue;
                var sw = System.Diagnostics.Stopwatch.StartNew();
                try
                {
                    string detail = run();
                    passed++;
                    Console.WriteLine($"PASS {name} ({sw.Elapsed.TotalSeconds:F2} s): {detail}");
                }
                catch (Exception e)
                {
                    failed++;
                    Console.WriteLine($"FAIL {name} ({sw.Elapsed.TotalSeconds:F2} s): {e.GetType().Name}: {e.Message}");
                    if (e is not CheckFailedException) Console.WriteLine(e.StackTrace);
                }
            }
            Console.WriteLine($"{passed} passed, {failed} failed");
            return failed == 0 ? 0 : 1;
        }
    case "bench":
        {
            int[] Ints(string name, string fallback) => Option(name, fallback).Split(',', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
            DecodeBench.Run(Option("--config", Path.Combine("bench", "configs", "llama-3.1-8b.json")), Ints("--contexts", "4096"),
                Ints("--batch-contexts", ""), int.Parse(Option("--batch", "8")), int.Parse(Option("--steps", "64")), Ints("--prefill", "4096"), Console.Out);
            return 0;
        }
    case "bench-paged":
        {
            var contexts = Option("--contexts", "4096").Split(',').Select(int.Parse).ToArray();
            var batches = Option("--batch", "1").Split(',').Select(int.Parse).ToArray();
            if (!Enum.TryParse<PipelinedBlockClaims>(Option("--claims", "measured"), ignoreCase: true, out var claims) || !Enum.IsDefined(claims))
            {
                Console.Error.WriteLine($"unknown --claims '{Option("--claims", "")}' (off, measured, always)");
                return 2;
            }
            if (OnOff("--narrow-ffn") is not bool narrow || OnOff("--fold-append") is not bool fold || OnOff("--early-tables") is not bool early)
                return 2;
            if (!int.TryParse(Option("--repeats", "3"), out int repeats) || repeats < 1)
            {
                Console.Error.WriteLine($"--repeats takes a count of timed runs a row (1 or more), not '{Option("--repeats", "")}'");
                return 2;
            }
            PagedDecodeBench.Run(Option("--config", Path.Combine("bench", "configs", "llama-3.1-8b.json")), contexts, batches,
                int.Parse(Option("--steps", "32")), Console.Out, Option("--only", ""), claims, narrow, fold, early, repeats);
            return 0;
        }
    case "bench-gemv":
        {
            int[] Ints(string name, string fallback) => Option(name, fallback).Split(',', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
            GemvBench.Run(Option("--config", Path.Combine("bench", "configs", "llama-3.1-8b.json")), int.Parse(Option("--batch", "8")),
                int.Parse(Option("--rounds", "2")), Ints("--contexts", "4096"), int.Parse(Option("--steps", "32")), Console.Out);
            return 0;
        }
    case "bench-kvzip":
        {
            int[] Ints(string name, string fallback) => Option(name, fallback).Split(',', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
            string baseline = Option("--baseline", "");
            KvzipBench.Run(Option("--config", Path.Combine("bench", "configs", "llama-3.1-8b-2layers.json")), Option("--needle", Path.Combine("models", "kvsharp-needle-16m")),
                baseline.Length > 0 ? baseline : null, Ints("--contexts", "4096,32768"), Ints("--rows", "16,512,2048"), Ints("--press-contexts", "32768"), Console.Out);
            return 0;
        }
    case "bench-press":
        PressBench.Run(Option("--needle", Path.Combine("models", "kvsharp-needle-16m")),
            Option("--contexts", "2048,6000").Split(',').Select(int.Parse).ToArray(),
            Option("--presses", "snapkv:keep=0.3;adakv(snapkv):keep=0.3;tova:keep=0.3;h2o:keep=0.3;keynorm:keep=0.3;streamingllm:keep=0.3;kvzip:keep=0.3,chunk=512")
                .Split(';', StringSplitOptions.RemoveEmptyEntries), Console.Out);
        return 0;
    case "compile":
        // The checks and benchmarks compile each kernel file on first use, one after another (minutes for
        // paged_attention_tc.cu); processes of this command fill the cache ($KVSHARP_CUDA_CACHE) in parallel beforehand.
        // FILE.cu:NAME=VALUE,NAME... builds the file with those defines; pipelined:G,VG,FORMAT[+FORMAT...] the
        // format-specialized build of the pipelined kernel a cache of those block formats launches (float32, the residual's,
        // always added), e.g. pipelined:4,32,Int2 for KIVI-2 over Llama-3.1-8B's shape; pipelined:4,32,Int4,steal its build
        // with block claims (CudaPagedKernels.BlockClaims).
        foreach (string spec in args[1..])
        {
            var sw = System.Diagnostics.Stopwatch.StartNew();
            string[] parts = spec.Split(':', 2);
            if (parts[0] == "pipelined" && parts.Length > 1)
            {
                string[] p = parts[1].Split(',');
                int formats = p[2].Split('+').Aggregate(1 << (int)KvFormat.F32, (m, f) => m | 1 << (int)Enum.Parse<KvFormat>(f, ignoreCase: true));
                KernelCompiler.CompileEmbedded("paged_attention_tc.cu", CudaDevice.Shared.Architecture,
                    CudaPagedKernels.PipelinedDefines(int.Parse(p[0]), int.Parse(p[1]), formats, steal: p.Length > 3 && p[3] == "steal"));
            }
            else KernelCompiler.CompileEmbedded(parts[0], CudaDevice.Shared.Architecture, parts.Length > 1 ? parts[1].Split(',') : null);
            Console.WriteLine($"{spec}: compiled in {sw.Elapsed.TotalSeconds:F1} s");
        }
        return 0;
    case "bench-sampling":
        SamplingBench.Run(int.Parse(Option("--vocab", "128256")), int.Parse(Option("--repetitions", "50")), Console.Out);
        if (Option("--config", "") is { Length: > 0 } decodeConfig) SamplingBench.RunDecode(decodeConfig, int.Parse(Option("--tokens", "256")), Console.Out);
        return 0;
    default:
        Console.WriteLine($"unknown command '{command}' (selftest, bench, bench-paged, bench-gemv, bench-kvzip, bench-press, bench-sampling, compile, kvsharp)");
        return 64;
}

