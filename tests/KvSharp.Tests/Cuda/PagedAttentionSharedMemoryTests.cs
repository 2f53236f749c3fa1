using KvSharp.Cache.Blocks;
using KvSharp.Compute.Cuda.Model;
using KvSharp.Compute.Cuda.Runtime;

namespace KvSharp.Tests.Cuda;

/// <summary>
/// The paged attention kernels' shared-memory accounting (no GPU needed): the longest split the planner may pick fits the
/// 48 KB a launch gets without opting in, one block more would not, and the tensor-core kernel's shape rule.
/// </summary>
public class PagedAttentionSharedMemoryTests
{
    private const int Limit = 48 * 1024;

    [Theory]
    [InlineData(PagedAttentionKernel.LaneChannels)]
    [InlineData(PagedAttentionKernel.Wide)]
    [InlineData(PagedAttentionKernel.TensorCores)]
    [InlineData(PagedAttentionKernel.VidKv)]
    public void LongestSplitFitsTheLaunchLimit(PagedAttentionKernel kernel)
    {
        foreach (int group in new[] { 1, 2, 4, 8 })
            foreach (int headDim in new[] { 64, 128 })
                foreach (int blockTokens in new[] { 16, 32, 64 })
                {
                    int max = CudaPagedKernels.MaxChunkBlocks(group, headDim, blockTokens, kernel);
                    Assert.True(max >= 1, $"G{group} hd{headDim} {blockTokens} tokens: no split fits");
                    // Hand count: floats of the accumulators, block offsets, scores, the wide kernel's query copies and the
                    // tensor-core kernel's descriptors (16 bytes a block), the VidKV kernel's per-warp folded and transformed queries; 512 bytes stay free for the static variables.
                    int Bytes(int chunk) => 4 * (group * headDim + chunk + 1 + group * chunk * blockTokens
                        + (kernel == PagedAttentionKernel.Wide ? 5 * (group * headDim + headDim / 2) : 0)
                        + (kernel == PagedAttentionKernel.TensorCores ? 4 * chunk : 0)
                        + (kernel == PagedAttentionKernel.VidKv ? 4 * group * (headDim + blockTokens) : 0));
                    Assert.Equal(Bytes(max), CudaPagedKernels.SharedBytes(group, headDim, blockTokens, max, kernel));
                    Assert.True(Bytes(max) <= Limit - 512, $"G{group} hd{headDim}: {Bytes(max)} bytes");
                    Assert.True(Bytes(max + 1) > Limit - 512, $"G{group} hd{headDim}: {max + 1} blocks would fit too");
                }
    }

    [Fact]
    public void TensorCoresNeedHeadDim128AndValueGroupsOf32To128()
    {
        Assert.True(CudaPagedKernels.SupportsTensorCores(4, 128, 32));
        Assert.True(CudaPagedKernels.SupportsTensorCores(8, 128, 128));
        Assert.False(CudaPagedKernels.SupportsTensorCores(4, 64, 32));
        Assert.False(CudaPagedKernels.SupportsTensorCores(4, 128, 16));
        Assert.False(CudaPagedKernels.SupportsTensorCores(3, 128, 32));
        Assert.True(CudaPagedKernels.SupportsPipelined(4, 128, 32, 32));
        Assert.False(CudaPagedKernels.SupportsPipelined(4, 128, 32, 64));
        Assert.False(CudaPagedKernels.SupportsPipelined(4, 64, 32, 16));
    }

    [Fact]
    public void PipelinedKernelCountsItsRingsQueryOutputAndDescriptors()
    {
        Assert.Equal(16 * 1024, CudaPagedKernels.PipelineRingBytes);
        foreach (int group in new[] { 1, 2, 4, 8 })
            foreach (int chunk in new[] { 1, 85, CudaPagedKernels.PipelinedMaxChunkBlocks })
            {
                // Hand count: 4 rings of 16 KB (after the block loop they also hold the 4 warps' output slices, 4 × 128
                // floats a head: 2 KB · group ≤ 64 KB), 4 warps × 8 barriers of 8 bytes, the padded hi/lo query (64 word
                // pairs and 36 words of padding a head), (max, sum) per warp and head, 16 bytes of descriptor a block and 7
                // more (the split's last block staged in up to 8 pieces).
                int expected = 4 * 16384 + 4 * 8 * 8 + 4 * ((128 + 36) * group) + 4 * (2 * 4 * group) + 16 * (chunk + 7);
                Assert.Equal(expected, CudaPagedKernels.SharedBytes(group, 128, 32, chunk, PagedAttentionKernel.Pipelined));
            }
        // Three blocks of 4 query heads per KV head fit an H100's 228 KB (1 KB reserved per block) even at the longest split.
        Assert.True(3 * (CudaPagedKernels.PipelinedSharedBytes(4, CudaPagedKernels.PipelinedMaxChunkBlocks) + 1024) <= 228 * 1024);
    }

    [Fact]
    public void SmallRingsLetFourBlocksShareAMultiprocessor()
    {
        Assert.Equal(8 * 1024, CudaPagedKernels.PipelineSmallRingBytes);
        foreach (int group in new[] { 1, 2, 4, 8 })
        {
            // Hand count as above with rings of 8 KB (the output slices, 2 KB · group, still fit their 32 KB at group 8).
            int expected = 4 * 8192 + 4 * 8 * 8 + 4 * ((128 + 36) * group) + 4 * (2 * 4 * group) + 16 * (256 + 7);
            Assert.Equal(expected, CudaPagedKernels.PipelinedSharedBytes(group, CudaPagedKernels.PipelinedMaxChunkBlocks, CudaPagedKernels.PipelineSmallRingBytes));
            // Four blocks (the kernel's register bound, __launch_bounds__(128, 4)) fit 228 KB with 8 KB rings, not with 16 KB ones.
            Assert.True(4 * (expected + 1024) <= 228 * 1024, $"G{group}: {expected} bytes");
            Assert.True(4 * (CudaPagedKernels.PipelinedSharedBytes(group, 1) + 1024) > 228 * 1024);
        }
    }

    [Fact]
    public void SmallRingsTakeBlocksOfAtMostFourBitsAndTheFloatResidual()
    {
        // 32-token blocks of head dimension 128: INT4 keys 2 KB of codes + 512 bytes of scales and mins fit half of 8 KB;
        // INT8 (4.5 KB) and F16 (8 KB) do not; FP8 (4 KB) would, but with one block per ring (it keeps 16 KB rings).
        foreach (var f in new[] { KvFormat.Int4, KvFormat.Int2, KvFormat.Ternary, KvFormat.Binary, KvFormat.F32 })
            Assert.True(CudaPagedKernels.FitsSmallRing(f), f.ToString());
        foreach (var f in new[] { KvFormat.F16, KvFormat.BF16, KvFormat.Fp8E4M3, KvFormat.Int8, KvFormat.VidKvKey, KvFormat.VidKvValue })
            Assert.False(CudaPagedKernels.FitsSmallRing(f), f.ToString());
        var int4 = BlockLayout.ForKeys(KvFormat.Int4, 128, 32);
        Assert.Equal(32 * 128 / 2 + 128 * 2 * 2, int4.ByteSize);
        Assert.True(int4.ByteSize <= CudaPagedKernels.PipelineSmallRingBytes / 2);
        Assert.True(BlockLayout.ForKeys(KvFormat.Int8, 128, 32).ByteSize > CudaPagedKernels.PipelineSmallRingBytes / 2);
    }

    [Fact]
    public void SmallRingsOnlyWhenEveryHeldFormatFitsThem()
    {
        static int Mask(params KvFormat[] formats) => formats.Aggregate(0, (m, f) => m | 1 << (int)f);
        Assert.True(CudaPagedKernels.UsesSmallRings(Mask(KvFormat.F32, KvFormat.Int2)));          // KIVI-2 and its residual
        Assert.True(CudaPagedKernels.UsesSmallRings(Mask(KvFormat.F32, KvFormat.Int4, KvFormat.Binary)));
        Assert.False(CudaPagedKernels.UsesSmallRings(Mask(KvFormat.F32, KvFormat.F16)));          // 8 KB F16 blocks: 16 KB rings
        Assert.False(CudaPagedKernels.UsesSmallRings(Mask(KvFormat.F32, KvFormat.Int4, KvFormat.Int8))); // one large format is enough
        Assert.False(CudaPagedKernels.UsesSmallRings(0));                                         // unknown: the generic plan
    }

    [Fact]
    public void OneWaveChunkKeepsEveryLayerInOneWave()
    {
        // 128K tokens in blocks of 32 (4096 per head), 8 KV heads, 396 resident blocks: layerBlocks / 396 rounded up (83)
        // gave 8 × 50 = 400 grid blocks, four past the wave; the rule leaves room for one partial split per head.
        long chunk = CudaPagedKernels.OneWaveChunk(4096, 8 * 4096, 396, 8);
        Assert.Equal(84, chunk); // ceil(4096 / 49), 49 = 396 / 8 splits a head (the sum rule: ceil(32768 / 388) = 85)
        Assert.True(8 * ((4096 + chunk - 1) / chunk) <= 396);
        // Batch 8 at 32K tokens (1025 blocks a head, 66 resident blocks a sequence): 8 splits of 129 a head, not 142.
        Assert.Equal(129, CudaPagedKernels.OneWaveChunk(1025, 8 * 1025, 66, 8));
        // Unequal heads (KVzip): Σ ceil(length / chunk) over the heads stays within the wave.
        var rnd = new Random(5);
        for (int trial = 0; trial < 200; trial++)
        {
            int heads = rnd.Next(1, 33);
            var lengths = Enumerable.Range(0, heads).Select(_ => rnd.Next(1, 5000)).ToArray();
            long wave = rnd.Next(heads + 1, 1000);
            long c = CudaPagedKernels.OneWaveChunk(lengths.Max(), lengths.Sum(), wave, heads);
            Assert.True(lengths.Sum(l => (l + c - 1) / c) <= wave, $"heads {heads}, wave {wave}, chunk {c}");
            // Heads of one length: the longest over wave / heads splits, no partial split per head left room for.
            int length = lengths[0];
            long e = CudaPagedKernels.OneWaveChunk(length, (long)length * heads, wave, heads);
            Assert.True(heads * ((length + e - 1) / e) <= wave, $"heads {heads}, wave {wave}, chunk {e}");
            Assert.True(e <= (length + wave / heads - 1) / (wave / heads), $"heads {heads}, wave {wave}, chunk {e}");
        }
    }

    [Fact]
    public void WaveUnitsFitEveryLayerOfPairsUpToTheLongest()
    {
        // Batch 1, 128K tokens (4099 blocks a head with the appends' room), 8 KV heads, 396 resident blocks: one wave of
        // units, 396 splits a head at most; room for ceil(4099 / 49) = 84 blocks a split (49 = 396 / 8 units a head; the
        // sum rule's ceil(8 · 4099 / 388) = 85 is larger).
        Assert.Equal((396, 396, 84), CudaPagedKernels.WaveUnits(4099, 396, 1, 8));
        // 8 × 128K with small rings (528 resident blocks): 256 blocks a split at most need 64 pairs × ceil(4099 / 256) = 1088
        // units, so three whole waves, 1584 units (198 a row), whose room is ceil(4099 / 24) = 171 (24 units a pair).
        Assert.Equal((1584, 198, 171), CudaPagedKernels.WaveUnits(4099, 528, 8, 8));
        // Fewer resident blocks than heads: two waves of 5 hold the 8 heads, one split a head at most 100 blocks.
        Assert.Equal((10, 10, 100), CudaPagedKernels.WaveUnits(100, 5, 1, 8));
        var rnd = new Random(11);
        for (int trial = 0; trial < 300; trial++)
        {
            int rows = rnd.Next(1, 9), heads = rnd.Next(1, 17), longest = rnd.Next(1, 20000);
            long wave = rnd.Next(1, 1200);
            var (units, splits, chunk) = CudaPagedKernels.WaveUnits(longest, wave, rows, heads);
            Assert.True(chunk is >= 1 and <= CudaPagedKernels.PipelinedMaxChunkBlocks, $"chunk {chunk}");
            Assert.True(units >= Math.Max(rows * heads, wave) && units % wave == 0, $"units {units}");
            Assert.Equal(units / rows, splits);
            // Any layer of (row, head) pairs no longer than `longest` fits the units with the room as its chunk (every pair
            // at least one unit), and the room is at least the kernel's floor ceil(longest / splits), so the kernel's
            // search (the smallest chunk that fits, at least that floor) finds one within the descriptors' room.
            for (int layer = 0; layer < 5; layer++)
            {
                var lengths = Enumerable.Range(0, rows * heads).Select(_ => rnd.Next(0, longest + 1)).ToArray();
                if (layer == 0) lengths[0] = longest;
                long needed = lengths.Sum(l => Math.Max(1, (l + chunk - 1) / chunk));
                Assert.True(needed <= units, $"rows {rows}, heads {heads}, longest {longest}, wave {wave}: {needed} units > {units} (chunk {chunk})");
                Assert.True((lengths.Max() + splits - 1) / splits <= chunk, $"rows {rows}, heads {heads}, longest {longest}: floor above room {chunk}");
            }
        }
    }

    [Theory]
    // A cache's formats plus float32 (its residual): ≤ 4-bit blocks take the 8 KB rings, 4 grid blocks a multiprocessor;
    // 8- and 16-bit blocks (alone or mixed in) the 16 KB rings, 3.
    [InlineData(new[] { KvFormat.Int2 }, 65, 4)]
    [InlineData(new[] { KvFormat.Int4 }, 33, 4)]
    [InlineData(new[] { KvFormat.F16 }, 3, 3)]
    [InlineData(new[] { KvFormat.Fp8E4M3 }, 9, 3)]
    [InlineData(new[] { KvFormat.Int4, KvFormat.F16 }, 35, 3)]
    public void SpecializedBuildDefinesFollowTheRings(KvFormat[] formats, int bits, int minBlocks)
    {
        int mask = formats.Aggregate(1 << (int)KvFormat.F32, (m, f) => m | 1 << (int)f);
        Assert.Equal(bits, mask);
        Assert.Equal(["PIPE_ONLY", "PIPE_G=4", "PIPE_VG=32", $"PIPE_FORMATS={bits}", $"PIPE_MIN_BLOCKS={minBlocks}"],
            CudaPagedKernels.PipelinedDefines(4, 32, mask));
        // Block claims are a build of their own: the same defines and PIPE_STEAL.
        Assert.Equal(["PIPE_ONLY", "PIPE_G=4", "PIPE_VG=32", $"PIPE_FORMATS={bits}", $"PIPE_MIN_BLOCKS={minBlocks}", "PIPE_STEAL"],
            CudaPagedKernels.PipelinedDefines(4, 32, mask, steal: true));
    }

    [Theory]
    // Claims measured faster only for INT4 caches (residual aside) in one wave with ~62 blocks a unit or more (stop 31:
    // 8 × 32K, 8 × 16K, 4 × 32K), slower at ~31 (8 × 8K), at ~37 (KVzip 0.3 + INT4 at 8 × 32K) and over two waves
    // (8 × 128K, KIVI-4 ~248 a unit, KVzip 0.3 + INT4 ~75); INT2, F16, FP8 slower or unchanged.
    [InlineData(new[] { KvFormat.Int4 }, 124.0, 1, true)]
    [InlineData(new[] { KvFormat.Int4 }, 62.0, 1, true)]
    [InlineData(new[] { KvFormat.Int4 }, 37.0, 1, false)]
    [InlineData(new[] { KvFormat.Int4 }, 31.0, 1, false)]
    [InlineData(new[] { KvFormat.Int4 }, 248.0, 2, false)]
    [InlineData(new[] { KvFormat.Int4 }, 75.0, 2, false)]
    [InlineData(new[] { KvFormat.Int2 }, 124.0, 1, false)]
    [InlineData(new[] { KvFormat.F16 }, 170.0, 1, false)]
    [InlineData(new[] { KvFormat.Fp8E4M3 }, 170.0, 1, false)]
    [InlineData(new[] { KvFormat.Int4, KvFormat.F16 }, 124.0, 1, false)]
    public void BlockClaimsPayForLongInt4UnitsInOneWaveOnly(KvFormat[] formats, double blocksPerUnit, int waves, bool pays)
    {
        int mask = formats.Aggregate(1 << (int)KvFormat.F32, (m, f) => m | 1 << (int)f);
        Assert.Equal(pays, CudaPagedKernels.ClaimsPay(mask, blocksPerUnit, waves));
    }

    [Fact]
    public void BlockClaimsGetTheirDescriptorsRoom()
    {
        // The claims' room: 8 pieces, 4 warps × (a ring of 16 and 4 raw descriptors), 2 entries of shared state
        // (paged_attention_tc.cu, STEAL_ROOM), 16 bytes each, in place of the chunk's descriptors and the 7 extra pieces every
        // plan has where those are fewer.
        const int ring = 8192, room = 8 + 4 * (16 + 4) + 2;
        var small = new CudaKernels.AttentionPlan(10, 4, CudaPagedKernels.PipelinedSharedBytes(4, 10, ring), RingBytes: ring, Formats: 33, Units: 528);
        var claimed = CudaPagedKernels.WithBlockClaims(small, 4);
        Assert.True(claimed.Steal);
        Assert.Equal(small.SharedBytes + 16 * (room - (10 + 7)), claimed.SharedBytes);
        Assert.Equal(small with { Steal = true, SharedBytes = claimed.SharedBytes }, claimed);
        var large = small with { Chunk = 200, SharedBytes = CudaPagedKernels.PipelinedSharedBytes(4, 200, ring) };
        Assert.Equal(large with { Steal = true }, CudaPagedKernels.WithBlockClaims(large, 4));
    }
}
