namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>Launchers of KVzip+'s weight kernels in paged_cache.cu: row norms, the output projection's per-head Gram matrices, value norms.</summary>
internal sealed partial class CudaPagedKernels
{
    /// <summary>Stored tokens per value-norm block (VN_TK in paged_cache.cu).</summary>
    private const int ValueNormTokens = 32;

    /// <summary>out[r] = ‖x_r‖ for the rows of x [rows, size] (float32).</summary>
    public void RowNorms(ulong x, ulong output, int rows, int size)
    {
        if (rows > 0) _cache["press_row_norms"].Launch(rows, 256, 0, x, output, Arg.Int(size));
    }

    /// <summary>
    /// grams [heads, headDim, headDim] = W_hᵀ W_h of the output projection w [rows, heads · headDim] (row-major, in
    /// <paramref name="type"/>), W_h the head's headDim columns.
    /// </summary>
    public void HeadGrams(DeviceWeightType type, ulong w, ulong grams, int rows, int heads, int headDim)
    {
        uint tiles = (uint)((headDim + 31) / 32);
        _cache[$"press_head_grams_{CudaKernels.Suffix(type)}"].Launch(new Dim3(tiles, tiles, (uint)heads), 256, 0, w, grams, Arg.Int(rows),
            Arg.Int(heads * headDim), Arg.Int(headDim));
    }

    /// <summary>
    /// ‖W_o^h v_t‖ of one layer's stored tokens [0, count) of every query head (storage order) into output
    /// [kvHeads, heads / kvHeads, stride], from the layer's Gram matrices [heads, headDim, headDim] (<see cref="HeadGrams"/>).
    /// The tables are the layer's (pre-offset).
    /// </summary>
    public void ValueNorms(ulong pool, ulong desc, ulong headBlocks, ulong headTokens, ulong grams, ulong output, int count, int stride, int heads,
        int kvHeads, int headDim, int blockTokens, int valueGroup, int maxBlocks)
    {
        if (count <= 0) return;
        int shared = 4 * (headDim * ValueNormTokens + 8 * ValueNormTokens);
        _cache["press_value_norms"].Launch(new Dim3((uint)((count + ValueNormTokens - 1) / ValueNormTokens), (uint)kvHeads), 256, shared, pool, desc,
            headBlocks, headTokens, grams, output, Arg.Int(count), Arg.Int(stride), Arg.Int(heads), Arg.Int(kvHeads), Arg.Int(headDim),
            Arg.Int(blockTokens), Arg.Int(valueGroup), Arg.Int(maxBlocks));
    }
}
