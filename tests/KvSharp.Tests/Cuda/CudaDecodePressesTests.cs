using KvSharp.Cache;
using KvSharp.Compression.Registry;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Generation;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// Which decode-time compressions the device runs (<see cref="CudaDecodePresses.Check"/>, decided on the host before any
/// GPU work): every decode press of <see cref="DecodePressRegistry"/>; anything else is refused in one line naming it and
/// the presses the device runs. The device runs are the GPU check "press: decode-time H2O / R-KV on the device".
/// </summary>
public class CudaDecodePressesTests
{
    private sealed class Custom : IDecodeCompression
    {
        public string Text => "custom:x=1";

        public IDecodeSession Start(IKvCache cache) => throw new NotSupportedException();
    }

    [Fact]
    public void EveryRegistryDecodePress_RunsOnTheDevice()
    {
        foreach (var press in DecodePressRegistry.Presses)
            CudaDecodePresses.Check(DecodePressRegistry.Parse(press.Name));
    }

    [Fact]
    public void OtherDecodeCompression_IsRefusedInOneLineNamingIt()
    {
        var e = Assert.Throws<KvSharpException>(() => CudaDecodePresses.Check(new Custom()));
        Assert.Contains("custom:x=1", e.Message);
        Assert.Contains("GPU", e.Message);
        foreach (var press in DecodePressRegistry.Presses) Assert.Contains(press.Name, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
