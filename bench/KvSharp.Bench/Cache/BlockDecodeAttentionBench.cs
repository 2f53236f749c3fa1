using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using KvSharp.Cache.Blocks;

namespace KvSharp.Bench.Cache;

/// <summary>
/// Single-thread decode attention of one KV head over 4096 tokens (128 blocks of 32 × 128) stored in one
/// format, keys per channel and values per token (KIVI), for a single query and for a GQA group of 4.
/// The "KV GB/s" column is the block bytes (keys + values, parameters included) read per second.
/// Run: dotnet run -c Release --project bench/KvSharp.Bench -- --filter '*BlockDecodeAttention*'
/// </summary>
[Config(typeof(BlockBenchConfig))]
public class BlockDecodeAttentionBench
{
    internal const int Tokens = 4096, HeadDim = 128;

    private List<KvBlock> _keys = [];
    private List<KvBlock> _values = [];
    private float[] _queries = [];
    private float[] _output = [];
    private OnlineSoftmax _state = null!;

    /// <summary>Storage format of every key and value block.</summary>
    [Params(KvFormat.F32, KvFormat.F16, KvFormat.BF16, KvFormat.Fp8E4M3, KvFormat.Int8, KvFormat.Int4, KvFormat.Int2, KvFormat.Ternary, KvFormat.Binary)]
    public KvFormat Format { get; set; }

    /// <summary>Query heads sharing the KV head.</summary>
    [Params(1, 4)]
    public int Queries { get; set; }

    /// <summary>Bytes of keys and values a pass reads for <paramref name="format"/>.</summary>
    internal static long KvBytes(KvFormat format)
        => (long)(Tokens / BlockLayout.DefaultTokens) * (BlockLayout.ForKeys(format, HeadDim).ByteSize + BlockLayout.ForValues(format, HeadDim).ByteSize);

    /// <summary>Encodes random Gaussian keys and values.</summary>
    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(1);
        var rows = new float[BlockLayout.DefaultTokens * HeadDim];
        var kl = BlockLayout.ForKeys(Format, HeadDim);
        var vl = BlockLayout.ForValues(Format, HeadDim);
        _keys = []; _values = [];
        for (int b = 0; b < Tokens / BlockLayout.DefaultTokens; b++)
        {
            for (int i = 0; i < rows.Length; i++) rows[i] = (float)(rng.NextDouble() * 2 - 1);
            var kb = new byte[kl.ByteSize];
            BlockCodec.Encode(kl, rows, BlockLayout.DefaultTokens, kb);
            _keys.Add(new KvBlock(kl, kb, BlockLayout.DefaultTokens));
            for (int i = 0; i < rows.Length; i++) rows[i] = (float)(rng.NextDouble() * 2 - 1);
            var vb = new byte[vl.ByteSize];
            BlockCodec.Encode(vl, rows, BlockLayout.DefaultTokens, vb);
            _values.Add(new KvBlock(vl, vb, BlockLayout.DefaultTokens));
        }
        _queries = new float[Queries * HeadDim];
        for (int i = 0; i < _queries.Length; i++) _queries[i] = (float)(rng.NextDouble() * 2 - 1) / MathF.Sqrt(HeadDim);
        _output = new float[Queries * HeadDim];
        _state = new OnlineSoftmax(Queries, HeadDim);
    }

    /// <summary>One decode step of one KV head.</summary>
    [Benchmark]
    public float Attend()
    {
        BlockDecodeAttention.Attend(_keys, _values, _queries, Queries, _state, _output);
        return _output[0];
    }
}

/// <summary>A short job (the shared machine is small) plus the KV GB/s column.</summary>
internal sealed class BlockBenchConfig : ManualConfig
{
    public BlockBenchConfig()
    {
        AddJob(Job.Default.WithWarmupCount(3).WithIterationCount(10).WithLaunchCount(1));
        AddColumn(new KvBandwidthColumn());
    }
}

/// <summary>KV bytes read per second by <see cref="BlockDecodeAttentionBench.Attend"/>.</summary>
internal sealed class KvBandwidthColumn : IColumn
{
    public string Id => nameof(KvBandwidthColumn);
    public string ColumnName => "KV GB/s";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => "KV block bytes (keys + values, parameters included) read per second, 1e9 bytes";
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public bool IsAvailable(Summary summary) => true;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var stats = summary[benchmarkCase]?.ResultStatistics;
        var format = benchmarkCase.Parameters.Items.FirstOrDefault(p => p.Name == nameof(BlockDecodeAttentionBench.Format))?.Value;
        if (stats == null || format is not KvFormat f) return "-";
        return (BlockDecodeAttentionBench.KvBytes(f) / stats.Mean).ToString("F2"); // bytes per ns = GB/s
    }
}
