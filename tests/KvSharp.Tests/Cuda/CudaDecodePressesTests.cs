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

    /// <summary>
    /// The device cache's storage order (an uploaded cache: its blocks, then its tail, then appends; not ascending after a
    /// re-quantization) mapped to the ascending order the session scores in, and its choices mapped back: checked on a
    /// shuffled head against a direct search.
    /// </summary>
    [Fact]
    public void StorageOrder_MapsToAscendingPositionsAndBack()
    {
        int[] stored = [7, 2, 9, 0, 5, 3];
        var (ascending, order) = CudaDecodeCache.Ascending(stored);
        Assert.Equal([0, 2, 3, 5, 7, 9], ascending);
        for (int i = 0; i < order.Length; i++) Assert.Equal(ascending[i], stored[order[i]]);

        bool[] evictAscending = [false, true, false, false, true, false]; // positions 2 and 7
        var evictStored = CudaDecodeCache.ToStorageOrder(evictAscending, order);
        Assert.Equal([2, 7], stored.Where((_, i) => evictStored[i]).Order());
        Assert.Throws<ArgumentException>(() => CudaDecodeCache.ToStorageOrder([true], order));

        // Statistics cover the first tokens stored when the collection began (here 4 of the 6), in storage order.
        var (covered, sums) = CudaDecodeCache.Covered(ascending, order, [0.7f, 0.2f, 0.9f, 0.0f]);
        Assert.Equal([0, 2, 7, 9], covered);
        Assert.Equal([0.0f, 0.2f, 0.7f, 0.9f], sums);
    }

    /// <summary>A head stored ascending (a prefill, appends, evictions) maps to itself (the stored list taken as it is, no sort); one step back anywhere takes the sort.</summary>
    [Fact]
    public void AscendingStorage_IsTheIdentityOrder()
    {
        int[] stored = [0, 3, 4, 9, 12];
        var (ascending, order) = CudaDecodeCache.Ascending(stored);
        Assert.Equal([0, 3, 4, 9, 12], ascending);
        Assert.Equal([0, 1, 2, 3, 4], order);
        var (covered, sums) = CudaDecodeCache.Covered(ascending, order, [0.5f, 0.1f, 0.3f]);
        Assert.Equal([0, 3, 4], covered);
        Assert.Equal([0.5f, 0.1f, 0.3f], sums);

        var (sorted, byStorage) = CudaDecodeCache.Ascending([4, 9, 1]); // one step back: sorted
        Assert.Equal([1, 4, 9], sorted);
        Assert.Equal([2, 0, 1], byStorage);
    }
}
