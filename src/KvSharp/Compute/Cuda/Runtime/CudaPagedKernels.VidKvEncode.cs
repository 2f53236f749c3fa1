using KvSharp.Cache.Blocks;

namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>Launcher of the device VidKV encoder (paged_vidkv_encode in paged_cache.cu).</summary>
internal sealed partial class CudaPagedKernels
{
    /// <summary>
    /// Shared memory of one VidKV encoding block: 2 · max(hd, tokens) doubles and max(hd, tokens) flags, the block's rows
    /// [tokens, hd] floats, then the staging words of the larger of the two VidKV blocks.
    /// </summary>
    public static int VidKvEncodeSharedBytes(BlockLayout keys, BlockLayout values)
    {
        int wide = Math.Max(keys.HeadDim, keys.Tokens);
        return 2 * wide * sizeof(double) + wide * sizeof(int) + keys.Tokens * keys.HeadDim * sizeof(float) + (Math.Max(keys.ByteSize, values.ByteSize) + 3) / 4 * 4;
    }

    /// <summary>
    /// Re-encodes, per head, the first selected[head] blocks (full, <paramref name="keys"/>.Tokens tokens each) as VidKV
    /// blocks of <paramref name="keys"/> / <paramref name="values"/>, in place, and sets their descriptors' formats.
    /// <paramref name="basis"/>: the float64 real-DFT basis of the block tokens.
    /// </summary>
    public void VidKvEncode(ulong pool, ulong desc, ulong selected, ulong basis, int heads, int maxSelected, int maxBlocks, int valueGroup,
        BlockLayout keys, BlockLayout values)
    {
        if (maxSelected <= 0) return;
        var f = _cache["paged_vidkv_encode"];
        int shared = VidKvEncodeSharedBytes(keys, values);
        if (shared > 48 * 1024) f.AllowSharedMemory(shared);
        var k = keys.Vid;
        var v = values.Vid;
        f.Launch(new Dim3((uint)maxSelected, (uint)heads), 256, shared, pool, desc, selected, basis, Arg.Int(maxBlocks), Arg.Int(keys.Tokens),
            Arg.Int(keys.HeadDim), Arg.Int(valueGroup), Arg.Int(keys.GroupSize), Arg.Int(values.GroupSize), Arg.Int(k.FirstCodeOffset),
            Arg.Int(k.SecondCodeOffset), Arg.Int(k.ParameterOffset), Arg.Int(k.ByteSize), Arg.Int(v.FirstCodeOffset), Arg.Int(v.SecondCodeOffset),
            Arg.Int(v.ParameterOffset), Arg.Int(v.ByteSize));
    }
}
