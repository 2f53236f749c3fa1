using System.Diagnostics;
using System.Runtime.Intrinsics;
using System.Runtime.InteropServices;
using KvSharp.Compute.Cpu;
using KvSharp.Formats;

namespace KvSharp.Bench.Kernels;

/// <summary>
/// Stopwatch measurements that finish in seconds (BenchmarkDotNet runs take minutes): memory read
/// bandwidth of this machine and matvec/matmul throughput per weight type, as GB/s of weights read.
/// Run with: dotnet run -c Release --project bench/KvSharp.Bench -- kernels-quick [threads]
/// </summary>
public static unsafe class QuickKernelBench
{
    /// <summary>Entry point for the quick mode.</summary>
    public static void Run(string[] args)
    {
        if (args.Length > 1) CpuThreads.Count = int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture);
        Console.WriteLine($"threads {CpuThreads.Count}, AVX2 {System.Runtime.Intrinsics.X86.Avx2.IsSupported}");
        Console.WriteLine($"memory read bandwidth (512 MiB, {CpuThreads.Count} threads): {MemoryBandwidth(512L << 20):F1} GB/s");
        Console.WriteLine($"memory read bandwidth (512 MiB, 1 thread): {MemoryBandwidth(512L << 20, 1):F1} GB/s");
        var types = new[] { GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K };
        if (args.Length > 2) types = args[2].Split(',').Select(Enum.Parse<GgmlType>).ToArray();
        else DispatchOverhead();
        Console.WriteLine("| type | shape | n | MB | ms/call (wall) | GB/s weights (wall) | GFLOP/s (wall) | GB/s per CPU-second |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|");
        foreach (var (rows, cols) in new[] { (4096, 4096), (896, 4864), (4864, 896) })
            foreach (var t in types)
                if (cols % GgmlTypeInfo.BlockSize(t) == 0) Measure(t, rows, cols, 1);
        foreach (var t in types)
            Measure(t, 2048, 2048, 64);
    }

    private static void NoOp(void* ctx, int chunk) { }

    /// <summary>Round-trip cost of handing an empty job to all threads: our pool vs Parallel.For.</summary>
    private static void DispatchOverhead()
    {
        const int reps = 20000;
        for (int round = 0; round < 2; round++)
        {
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < reps; i++) CpuThreads.Run(CpuThreads.Count, &NoOp, null);
            double pool = sw.Elapsed.TotalMilliseconds * 1000 / reps;
            sw.Restart();
            for (int i = 0; i < reps; i++) Parallel.For(0, CpuThreads.Count, _ => { });
            double pfor = sw.Elapsed.TotalMilliseconds * 1000 / reps;
            if (round == 1) Console.WriteLine($"dispatch of an empty job to {CpuThreads.Count} threads: pool {pool:F2} µs, Parallel.For {pfor:F2} µs");
        }
    }

    private static void Measure(GgmlType t, int rows, int cols, int n)
    {
        using var w = new KernelWeights(t, rows, cols, n);
        w.Run();
        // CPU time of the process next to wall time: on a machine shared with other work the wall
        // time measures the scheduler; CPU time (with one thread: no spinning workers) measures the kernel.
        var proc = Process.GetCurrentProcess();
        var cpu0 = proc.TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        int iters = 0;
        while (sw.ElapsedMilliseconds < 700 || iters < 3) { w.Run(); iters++; }
        double s = sw.Elapsed.TotalSeconds / iters;
        proc.Refresh();
        double cpu = (proc.TotalProcessorTime - cpu0).TotalSeconds / iters;
        Console.WriteLine($"| {t} | {rows}x{cols} | {n} | {w.Bytes / 1e6:F1} | {s * 1e3:F3} | {w.Bytes / s / 1e9:F1} | {2.0 * rows * cols * n / s / 1e9:F1} | {w.Bytes / cpu / 1e9:F1} |");
    }

    /// <summary>Bytes read per second by a parallel vector sum over a buffer much larger than L3.</summary>
    public static double MemoryBandwidth(long bytes, int threads = 0)
    {
        threads = threads <= 0 ? CpuThreads.Count : threads;
        byte* p = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
        try
        {
            new Span<byte>(p, (int)Math.Min(bytes, int.MaxValue)).Fill(1);
            for (long i = int.MaxValue; i < bytes; i += 4096) p[i] = 1;
            double best = 0;
            for (int rep = 0; rep < 5; rep++)
            {
                var sw = Stopwatch.StartNew();
                var sums = new float[threads];
                Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
                {
                    long start = bytes / threads * t, end = bytes / threads * (t + 1);
                    var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
                    for (long i = start; i + 128 <= end; i += 128)
                    {
                        a0 += Vector256.Load((float*)(p + i));
                        a1 += Vector256.Load((float*)(p + i + 32));
                        a2 += Vector256.Load((float*)(p + i + 64));
                        a3 += Vector256.Load((float*)(p + i + 96));
                    }
                    sums[t] = Vector256.Sum(a0 + a1 + a2 + a3);
                });
                best = Math.Max(best, bytes / sw.Elapsed.TotalSeconds / 1e9);
            }
            return best;
        }
        finally
        {
            NativeMemory.AlignedFree(p);
        }
    }
}
