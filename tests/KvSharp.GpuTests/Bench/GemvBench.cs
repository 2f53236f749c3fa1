using System.Diagnostics;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;
using KvSharp.Formats;
using KvSharp.Models.Loading;

namespace KvSharp.GpuTests.Bench;

/// <summary>
/// The batch decode products over every layer's own matrices (dummy BF16 weights): each product class launched once per
/// layer back to back (32 launches, no L2 reuse between them, as in a step; the 1 GB head 8 times), the products-only
/// sequence of a step (every layer's 4 products and the head) and the graph decode step, in rounds. A timeline build of
/// gemv.cu (scripts/gemv-timeline.py: each grid block writes {entry, after griddepcontrol.wait, first step, loop end,
/// end} past its outputs) is summarized per class: where a launch's time goes beyond its bytes.
/// </summary>
public static class GemvBench
{
    private const int Repeats = 5;

    /// <summary>Runs the benchmark and writes its log and result tables to <paramref name="log"/>.</summary>
    public static void Run(string configPath, int batch, int rounds, IReadOnlyList<int> contexts, int steps, TextWriter log)
    {
        var (device, bandwidth, config, gpu) = DecodeBench.OpenDummyModel(configPath, log);
        using var _ = gpu;
        using var timer = new CudaTimer(device);
        var k = gpu.Kernels;
        int layers = config.NumLayers;
        var byLayer = Enumerable.Range(0, layers).Select(l => gpu.DecodeMatrices(l, batch)).ToArray();
        int classes = byLayer[0].Count;
        // Outputs of launch i at y + i·stride, with room past them for a timeline build's records (8 · 8 bytes a block).
        long stride = byLayer[0].Max(m => 32L * m.Matrix.Rows + 64L * (m.Matrix.Rows / 8 + 1));
        stride = (stride + 255) / 256 * 256;
        using var x = device.Allocate(4L * batch * Math.Max(config.HiddenSize, config.IntermediateSize));
        using var y = device.Allocate(stride * layers);
        x.Fill32(0x3C000000u); // 2^-7: finite, non-zero activations

        void Launch(int c, int l, int slot)
        {
            var (_, m, mode, norm, narrow) = byLayer[l][c];
            int rows = mode == CudaKernels.GemvMode.SwiGlu ? m.Rows / 2 : m.Rows;
            k.Gemv(m.Type, m.Pointer, x.Pointer, y.Pointer + (ulong)(slot * stride), rows, m.Cols, batch, mode, norm, 1e-5f, narrow);
        }
        // Median of Repeats event-timed runs of launch(), after one untimed.
        double Median(Action launch)
        {
            launch();
            var t = new List<double>();
            for (int r = 0; r < Repeats; r++)
            {
                timer.Start();
                launch();
                t.Add(timer.StopMilliseconds());
            }
            t.Sort();
            return t[Repeats / 2];
        }
        int LaunchesOf(int c) => c == classes - 1 ? 8 : layers; // the head: one matrix of 1 GB, 8 launches

        var table = new List<string>();
        for (int round = 1; round <= rounds; round++)
        {
            var cells = new List<string>();
            for (int c = 0; c < classes; c++)
            {
                int n = LaunchesOf(c);
                double us = Median(() => { for (int l = 0; l < n; l++) Launch(c, l, l); }) * 1e3 / n;
                var m = byLayer[0][c].Matrix;
                double gbps = m.Buffer.ByteLength / (us * 1e-6) / 1e9;
                log.WriteLine($"round {round}: {byLayer[0][c].Name} x{n} own matrices, {m.Buffer.ByteLength / 1e6:F0} MB: {us:F1} us a launch, {gbps:F0} GB/s ({gbps * 1e9 / bandwidth * 100:F0}% of copy; bytes alone {m.Buffer.ByteLength / bandwidth * 1e6:F1} us)");
                cells.Add($"{us:F1}");
            }
            // The products of a step in decode order (the attention left out).
            double seq = Median(() =>
            {
                for (int l = 0; l < layers; l++)
                    for (int c = 0; c < classes - 1; c++) Launch(c, l, c);
                Launch(classes - 1, 0, classes - 1);
            });
            cells.Add($"{seq:F3}");
            log.WriteLine($"round {round}: products sequence ({layers} layers + head): {seq:F3} ms ({gpu.WeightBytesReadPerToken / bandwidth * 1e3:F3} ms of bytes)");
            foreach (int context in contexts)
            {
                string row = DecodeBench.Decode(gpu, timer, context, batch, steps, bandwidth, gpu.WeightBytesReadPerToken, $"round {round}", log);
                cells.Add(row.Split('|', StringSplitOptions.TrimEntries)[3]);
            }
            table.Add($"| {round} | {string.Join(" | ", cells)} |");
        }

        for (int c = 0; c < classes; c++)
        {
            int n = LaunchesOf(c);
            y.Fill32(0);
            for (int l = 0; l < n; l++) Launch(c, l, l);
            device.Synchronize();
            Timeline(byLayer[0][c], n, y, stride, bandwidth, log);
        }

        log.WriteLine();
        log.WriteLine($"| round | {string.Join(" | ", byLayer[0].Select(m => m.Name + " us"))} | sequence ms | {string.Join(" | ", contexts.Select(c => $"step {c} ms"))} |");
        log.WriteLine($"|---|{string.Concat(Enumerable.Repeat("---|", classes + 1 + contexts.Count))}");
        foreach (var r in table) log.WriteLine(r);
    }

    /// <summary>
    /// Summarizes the block records a timeline build of gemv.cu left past each launch's outputs (nothing if none): per
    /// launch after the first, relative to the previous launch's last block end (µs, means over the launches).
    /// </summary>
    private static void Timeline((string Name, DeviceMatrix Matrix, CudaKernels.GemvMode Mode, ulong Norm, bool Narrow) m, int launches, DeviceBuffer y,
        long stride, double bandwidth, TextWriter log)
    {
        string name = m.Name;
        int rows = m.Mode == CudaKernels.GemvMode.SwiGlu ? m.Matrix.Rows / 2 : m.Matrix.Rows;
        int blocks = (rows + (m.Mode == CudaKernels.GemvMode.SwiGlu ? 7 : 15)) / (m.Mode == CudaKernels.GemvMode.SwiGlu ? 8 : 16);
        var all = new ulong[launches][];
        for (int i = 0; i < launches; i++)
        {
            all[i] = new ulong[8 * blocks];
            y.Download<ulong>(all[i], i * stride + 32L * rows);
            if (all[i][7] != 1) return; // not a timeline build
        }
        double Us(ulong t, ulong origin) => ((long)t - (long)origin) / 1e3;
        static double Pct(List<double> v, double p) { v.Sort(); return v[(int)Math.Min(v.Count - 1, Math.Round(p * (v.Count - 1)))]; }
        ulong Max(int i, int f) => Enumerable.Range(0, blocks).Max(b => all[i][8 * b + f]);
        double bytesUs = m.Matrix.Buffer.ByteLength / bandwidth * 1e6;
        var sums = new double[10];
        ulong granule = ulong.MaxValue;
        var ghz = new List<double>();
        for (int i = 1; i < launches; i++)
        {
            ulong prev = Max(i - 1, 4), prevLoop = Max(i - 1, 3);
            var r = all[i];
            List<double> F(int f) => Enumerable.Range(0, blocks).Select(b => Us(r[8 * b + f], prev)).ToList();
            var t0 = F(0); var t1 = F(1); var t2 = F(2); var t3 = F(3); var t4 = F(4);
            var firstData = Enumerable.Range(0, blocks).Select(b => Us(r[8 * b + 2], Math.Max(r[8 * b + 1], r[8 * b]))).ToList();
            double[] v =
            [
                Us(Max(i, 4), prev),                // period: last end to last end
                Us(prev, prevLoop),                 // the previous grid's end after its last loop end
                Pct(t0, 0.0), Pct(t0, 0.5),         // first / median block entry
                Pct(t1, 0.5),                       // median wait release
                Pct(firstData, 0.5),                // median first step after the wait (x loads + first weights)
                Pct(t3, 0.1), Pct(t3, 0.5), Pct(t3, 1.0), // loop ends: 10%, median, last
                Pct(t4, 1.0) - Pct(t3, 1.0),        // the last loop end to the last block end
            ];
            for (int j = 0; j < v.Length; j++) sums[j] += v[j] / (launches - 1);
            var times = Enumerable.Range(0, 5 * blocks).Select(j => r[8 * (j / 5) + j % 5]).Distinct().Order().ToArray();
            for (int j = 1; j < times.Length; j++) granule = Math.Min(granule, times[j] - times[j - 1]);
            for (int b = 0; b < blocks; b++) if (r[8 * b + 4] > r[8 * b]) ghz.Add(r[8 * b + 6] / (double)(r[8 * b + 4] - r[8 * b]));
        }
        log.WriteLine($"timeline {name} ({blocks} blocks, {launches} launches, bytes alone {bytesUs:F1} us; us from the previous launch's last block end; "
            + $"globaltimer step >= {granule} ns, SM clock {(ghz.Count > 0 ? Pct(ghz, 0.5) : 0):F2} GHz by clock64): period {sums[0]:F2}, previous end after its last loop end {sums[1]:F2}, "
            + $"entry first {sums[2]:F2} median {sums[3]:F2}, wait released (median) {sums[4]:F2}, first step after it (median) {sums[5]:F2}, "
            + $"loop ends 10% {sums[6]:F2} median {sums[7]:F2} last {sums[8]:F2}, last end after last loop end {sums[9]:F2}");
        // One launch's profile in 1 µs bins: blocks resident (entered, not ended) and streaming (first step done, loop not ended).
        int mid = launches / 2;
        ulong origin = Max(mid - 1, 4);
        var rm = all[mid];
        int bins = (int)Math.Ceiling(Us(Max(mid, 4), origin)) + 4;
        if (bins > 100) return; // the head: too long a line
        var profile = new List<string>();
        for (int bin = -4; bin < bins - 4; bin++)
        {
            int resident = 0, streaming = 0;
            for (int b = 0; b < blocks; b++)
            {
                double a = Us(rm[8 * b], origin), s = Us(rm[8 * b + 2], origin), e = Us(rm[8 * b + 3], origin), z = Us(rm[8 * b + 4], origin);
                if (a <= bin + 0.5 && z > bin + 0.5) resident++;
                if (s <= bin + 0.5 && e > bin + 0.5) streaming++;
            }
            profile.Add($"{bin}:{resident}/{streaming}");
        }
        log.WriteLine($"timeline {name} launch {mid} (us from the previous end: resident/streaming blocks): {string.Join(" ", profile)}");
    }
}
