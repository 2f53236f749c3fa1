using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using KvSharp.Compute.Cpu;
using KvSharp.Formats;

namespace KvSharp.Bench.Kernels;

/// <summary>Adds a "GB/s" column: weight bytes streamed per second of the benchmark's mean time.</summary>
public sealed class WeightBandwidthColumn : IColumn
{
    /// <inheritdoc />
    public string Id => "WeightGBps";
    /// <inheritdoc />
    public string ColumnName => "Weights GB/s";
    /// <inheritdoc />
    public bool AlwaysShow => true;
    /// <inheritdoc />
    public ColumnCategory Category => ColumnCategory.Custom;
    /// <inheritdoc />
    public int PriorityInCategory => 0;
    /// <inheritdoc />
    public bool IsNumeric => true;
    /// <inheritdoc />
    public UnitType UnitType => UnitType.Dimensionless;
    /// <inheritdoc />
    public string Legend => "bytes of the weight matrix divided by the mean time per call";
    /// <inheritdoc />
    public bool IsAvailable(Summary summary) => true;
    /// <inheritdoc />
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    /// <inheritdoc />
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    /// <inheritdoc />
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var report = summary[benchmarkCase];
        if (report?.ResultStatistics == null) return "-";
        var p = benchmarkCase.Parameters;
        var type = (GgmlType)p["Type"];
        var shape = (string)p["Shape"];
        var dims = shape.Split('x');
        long bytes = GgmlTypeInfo.RowBytes(type, long.Parse(dims[1], System.Globalization.CultureInfo.InvariantCulture))
            * long.Parse(dims[0], System.Globalization.CultureInfo.InvariantCulture);
        double seconds = report.ResultStatistics.Mean / 1e9;
        return (bytes / seconds / 1e9).ToString("F2", System.Globalization.CultureInfo.InvariantCulture);
    }
}

/// <summary>Config shared by the kernel benchmarks: the GB/s column.</summary>
public sealed class KernelBenchConfig : ManualConfig
{
    /// <summary>Creates the config.</summary>
    public KernelBenchConfig() => AddColumn(new WeightBandwidthColumn());
}

/// <summary>Decode matvec (n = 1) per weight type and shape ("rows x cols").</summary>
[Config(typeof(KernelBenchConfig))]
public class MatVecBenchmarks
{
    private KernelWeights? _w;

    /// <summary>Weight type.</summary>
    [Params(GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K)]
    public GgmlType Type { get; set; }

    /// <summary>Weight shape rows x cols.</summary>
    [Params("4096x4096", "896x4864")]
    public string Shape { get; set; } = "4096x4096";

    /// <summary>Activation rows (1 = decode).</summary>
    [Params(1)]
    public int N { get; set; } = 1;

    /// <summary>Builds the weights.</summary>
    [GlobalSetup]
    public void Setup()
    {
        var d = Shape.Split('x');
        _w = new KernelWeights(Type, int.Parse(d[0], System.Globalization.CultureInfo.InvariantCulture),
            int.Parse(d[1], System.Globalization.CultureInfo.InvariantCulture), N);
    }

    /// <summary>Frees the weights.</summary>
    [GlobalCleanup]
    public void Cleanup() => _w?.Dispose();

    /// <summary>One product.</summary>
    [Benchmark]
    public void MatMul() => _w!.Run();
}

/// <summary>Prefill matmul (n = 64 activation rows) per weight type.</summary>
[Config(typeof(KernelBenchConfig))]
public class PrefillBenchmarks : MatVecBenchmarksBase
{
}

/// <summary>Parameter set of <see cref="PrefillBenchmarks"/>.</summary>
public abstract class MatVecBenchmarksBase
{
    private KernelWeights? _w;

    /// <summary>Weight type.</summary>
    [Params(GgmlType.F32, GgmlType.F16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K)]
    public GgmlType Type { get; set; }

    /// <summary>Weight shape rows x cols.</summary>
    [Params("2048x2048")]
    public string Shape { get; set; } = "2048x2048";

    /// <summary>Activation rows.</summary>
    [Params(64)]
    public int N { get; set; } = 64;

    /// <summary>Builds the weights.</summary>
    [GlobalSetup]
    public void Setup()
    {
        var d = Shape.Split('x');
        _w = new KernelWeights(Type, int.Parse(d[0], System.Globalization.CultureInfo.InvariantCulture),
            int.Parse(d[1], System.Globalization.CultureInfo.InvariantCulture), N);
    }

    /// <summary>Frees the weights.</summary>
    [GlobalCleanup]
    public void Cleanup() => _w?.Dispose();

    /// <summary>One product.</summary>
    [Benchmark]
    public void MatMul() => _w!.Run();
}

/// <summary>Multi-threaded sequential read of 512 MiB: the machine's memory bandwidth ceiling for matvec.</summary>
public class MemoryBandwidthBenchmark
{
    /// <summary>Reads the buffer; the GB/s is printed to the log.</summary>
    [Benchmark]
    public double ReadBandwidthGBps() => QuickKernelBench.MemoryBandwidth(512L << 20);
}
