using KvSharp.GpuTests.Checks;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// Compression on the device: attention statistics against the CPU cache's statistics, re-quantization against the CPU
/// store's blocks byte for byte, SnapKV and H2O scored, selected and evicted on the device against the CPU press's kept
/// tokens, KVzip and the presses of <c>ask --device cuda</c> (SnapKV, TOVA, H2O, key-norm, StreamingLLM, random under
/// several budgets) against the CPU presses on the needle model (scores, kept tokens, answers). The checks live in
/// tests/KvSharp.GpuTests so the self-contained GPU runner executes the very same code. Skipped without a GPU.
/// </summary>
public class CudaPressTests
{
    [CudaFact] public void DeviceStatisticsMatchTheCpus() => PressChecks.StatisticsMatchCpu();
    [CudaFact] public void DeviceRequantizationMatchesTheCpuBlocks() => PressChecks.RequantizeMatchesCpu();
    [CudaFact] public void SnapKvOnTheDeviceKeepsTheCpuPressTokens() => PressChecks.SnapKvMatchesCpu();
    [CudaFact] public void H2oOnTheDeviceKeepsTheCpuPressTokens() => PressChecks.H2oMatchesCpu();
    [CudaFact] public void KvzipOnTheDeviceMatchesTheCpuPress() => KvzipChecks.MatchesCpu(RepoPaths.SharedFile("models", "kvsharp-needle-16m"));
    [CudaFact] public void AskDevicePressesMatchTheCpuPresses() => ContextPressChecks.MatchesCpu(RepoPaths.SharedFile("models", "kvsharp-needle-16m"));
    [CudaFact] public void AskDeviceQuantizationPressesAndSequencesMatchTheCpuPresses() => QuantizationPressChecks.MatchesCpu(RepoPaths.SharedFile("models", "kvsharp-needle-16m"));
}
