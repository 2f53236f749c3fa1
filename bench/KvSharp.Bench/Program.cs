using BenchmarkDotNet.Running;
using KvSharp.Bench.EndToEnd;

if (args.Length > 0 && args[0] == "llamacpp")
{
    var r = LlamaCppPeer.Measure(args[1], int.Parse(args[2]), int.Parse(args[3]), int.Parse(args[4]));
    Console.WriteLine($"llama.cpp prefill {r.PrefillTokensPerSecond:F1} tok/s, decode {r.DecodeTokensPerSecond:F1} tok/s");
    return;
}
if (args.Length > 0 && args[0] == "llamacpp-check")
{
    LlamaCppReferenceCheck.Run(args);
    return;
}
if (args.Length > 0 && args[0] == "numerics")
{
    NumericsBench.Run(args);
    return;
}
if (args.Length > 0 && args[0] == "e2e")
{
    EndToEndComparison.Run(args);
    return;
}
if (args.Length > 0 && args[0] == "kernels-quick")
{
    KvSharp.Bench.Kernels.QuickKernelBench.Run(args);
    return;
}
if (args.Length > 0 && args[0] == "press-quick")
{
    KvSharp.Bench.Cache.QuickPressBench.Run(args);
    return;
}
if (args.Length > 0 && args[0] == "cache-quick")
{
    KvSharp.Bench.Cache.QuickCacheBench.Run(args);
    return;
}
if (args.Length > 0 && args[0] == "clusterkv-recall")
{
    KvSharp.Bench.Recall.ClusterKvRecallBench.Run(args);
    return;
}
if (args.Length > 0 && args[0] == "quant-methods")
{
    KvSharp.Bench.Quantization.QuantMethodsBench.Run(args);
    return;
}
if (args.Length > 0 && args[0] == "press-decode")
{
    KvSharp.Bench.Quantization.PressDecodeBench.Run(args);
    return;
}
if (args.Length > 0 && args[0] == "kv-decode")
{
    KvSharp.Bench.Cache.DecodeAttentionBandwidthBench.Run(args);
    return;
}
if (args.Length > 0 && args[0] == "kv-profile")
{
    KvSharp.Bench.Cache.DecodeAttentionProfile.Run(args);
    return;
}
if (args.Length > 0 && args[0] == "kv-e2e")
{
    LongContextDecodeBench.Run(args);
    return;
}
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
