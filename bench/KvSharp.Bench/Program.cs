using BenchmarkDotNet.Running;

if (args.Length > 0 && args[0] == "kernels-quick")
{
    KvSharp.Bench.Kernels.QuickKernelBench.Run(args);
    return;
}
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
