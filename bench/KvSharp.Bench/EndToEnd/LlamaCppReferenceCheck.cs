using System.Runtime.InteropServices;
using System.Text.Json;
using LLama;
using LLama.Common;
using LLama.Extensions;
using LLama.Native;

namespace KvSharp.Bench.EndToEnd;

/// <summary>
/// <c>llamacpp-check [--dump DIR]</c>: runs ../shared/reference/stories260k.llamacpp.json's prompts through the llama.cpp
/// that LLamaSharp.Backend.Cpu ships (llama.cpp c0c7e147, default context: n_ctx 512, F16 KV cache, flash attention auto),
/// the prompt as one batch then greedy tokens one at a time, and reports whether it reproduces the file bit for bit:
/// prompt ids, the 200 greedy ids, and each recorded top-20 logit parsed to float. With <c>--dump</c>, every tensor
/// llama.cpp computes in the first 9 decode calls is written through its eval callback (DIR/p{prompt}/call{n}.bin), the
/// evidence the engine's llama.cpp numerics (CpuNumerics.LlamaCpp, src/KvSharp/Compute/Cpu/Ggml*.cs) were checked against
/// op by op.
/// </summary>
/// <remarks>
/// Dump format, per tensor: name and op (.NET BinaryWriter strings), ggml type (int32: 0 f32, 1 f16), ne[0..3] (int64),
/// then ne0·ne1·ne2·ne3 float32 values in ggml order (f16 widened). Reading ne/nb uses ggml_tensor's field offsets of this
/// ggml version (type, buffer, ne at byte 16, nb at byte 48).
/// </remarks>
internal static unsafe class LlamaCppReferenceCheck
{
    private const int DumpCalls = 9;
    private static delegate* unmanaged<IntPtr, IntPtr> _getName, _getData, _opDesc;
    private static BinaryWriter? _dump;

    public static void Run(string[] args)
    {
        string? dumpDir = args.Length > 2 && args[1] == "--dump" ? args[2] : null;
        // The reference was recorded with the AVX2 build (this machine's); an AVX-512 build sums in 16 lanes, not 8.
        NativeLibraryConfig.All.WithAvx(AvxLevel.Avx2);
        NativeLogConfig.llama_log_set((level, message) => { if (level == LLamaLogLevel.Error) Console.Error.Write(message); });
        string shared = EndToEndComparison.FindShared();
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(shared, "reference", "stories260k.llamacpp.json")));
        var p = new ModelParams(Path.Combine(shared, "models", "stories260k", "stories260K.gguf")) { GpuLayerCount = 0 };
        using var weights = LLamaWeights.LoadFromFile(p);
        if (dumpDir != null) BindGgml();

        int index = 0;
        foreach (var r in doc.RootElement.GetProperty("results").EnumerateArray())
        {
            int[] Ids(string name) => r.GetProperty(name).EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var promptIds = Ids("prompt_ids");
            var greedyIds = Ids("greedy_ids");
            var top20 = r.GetProperty("top20_logits_first_steps").EnumerateArray()
                .Select(step => step.EnumerateArray().Select(e => (Token: e[0].GetInt32(), Logit: (float)e[1].GetDouble())).ToArray()).ToArray();

            p.ToLlamaContextParams(out var cp);
            if (dumpDir != null) cp.cb_eval = (IntPtr)(delegate* unmanaged<IntPtr, byte, IntPtr, byte>)&OnTensor;
            using var ctx = SafeLLamaContextHandle.Create(weights.NativeHandle, cp);
            var tokens = weights.Tokenize(r.GetProperty("prompt").GetString()!, true, false, System.Text.Encoding.UTF8)
                .Select(t => (int)t).ToArray();

            var batch = new LLamaBatch();
            for (int i = 0; i < promptIds.Length; i++) batch.Add((LLamaToken)promptIds[i], i, LLamaSeqId.Zero, i == promptIds.Length - 1);
            int greedyEqual = 0, logitsEqual = 0, logitsTotal = 0, topSetsEqual = 0;
            for (int step = 0; step < greedyIds.Length; step++)
            {
                string? dumpPath = dumpDir != null && step < DumpCalls ? Path.Combine(dumpDir, $"p{index}", $"call{step}.bin") : null;
                if (dumpPath != null) Directory.CreateDirectory(Path.GetDirectoryName(dumpPath)!);
                using (_dump = dumpPath != null ? new BinaryWriter(File.Create(dumpPath)) : null)
                    if (ctx.Decode(batch) != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode failed at step {step}");
                var logits = ctx.GetLogitsIth(batch.TokenCount - 1).ToArray();
                int best = 0;
                for (int j = 1; j < logits.Length; j++) if (logits[j] > logits[best]) best = j;
                if (best == greedyIds[step]) greedyEqual++;
                if (step < top20.Length)
                {
                    foreach (var (token, logit) in top20[step])
                    {
                        logitsTotal++;
                        if (logits[token] == logit) logitsEqual++;
                    }
                    var ours = Enumerable.Range(0, logits.Length).OrderByDescending(j => logits[j]).Take(20).ToArray();
                    if (ours.SequenceEqual(top20[step].Select(e => e.Token))) topSetsEqual++;
                }
                batch.Clear();
                batch.Add((LLamaToken)greedyIds[step], promptIds.Length + step, LLamaSeqId.Zero, true);
            }
            Console.WriteLine($"prompt {index} ({promptIds.Length} tokens): prompt ids {(tokens.SequenceEqual(promptIds) ? "equal" : "DIFFER")}, " +
                $"greedy {greedyEqual}/{greedyIds.Length} equal, top-20 logits {logitsEqual}/{logitsTotal} bit-identical, " +
                $"top-20 order {topSetsEqual}/{top20.Length} steps equal");
            index++;
        }
    }

    private static void BindGgml()
    {
        // libggml-base is already loaded by LLamaSharp; resolve it by the same path it used.
        var lib = NativeLibrary.Load(Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "avx2", "libggml-base.so"));
        _getName = (delegate* unmanaged<IntPtr, IntPtr>)NativeLibrary.GetExport(lib, "ggml_get_name");
        _getData = (delegate* unmanaged<IntPtr, IntPtr>)NativeLibrary.GetExport(lib, "ggml_get_data");
        _opDesc = (delegate* unmanaged<IntPtr, IntPtr>)NativeLibrary.GetExport(lib, "ggml_op_desc");
    }

    /// <summary>ggml_backend_sched_eval_callback: asked first whether to observe a node (yes), then called once it is computed.</summary>
    [UnmanagedCallersOnly]
    private static byte OnTensor(IntPtr tensor, byte ask, IntPtr user)
    {
        if (ask != 0 || _dump == null) return 1;
        int type = *(int*)tensor;
        byte* data = (byte*)_getData(tensor);
        if ((type != 0 && type != 1) || data == null) return 1;
        long* ne = (long*)(tensor + 16);
        ulong* nb = (ulong*)(tensor + 48);
        _dump.Write(Marshal.PtrToStringAnsi(_getName(tensor))!);
        _dump.Write(Marshal.PtrToStringAnsi(_opDesc(tensor))!);
        _dump.Write(type);
        for (int i = 0; i < 4; i++) _dump.Write(ne[i]);
        for (long i3 = 0; i3 < ne[3]; i3++)
            for (long i2 = 0; i2 < ne[2]; i2++)
                for (long i1 = 0; i1 < ne[1]; i1++)
                    for (long i0 = 0; i0 < ne[0]; i0++)
                    {
                        byte* e = data + (ulong)i0 * nb[0] + (ulong)i1 * nb[1] + (ulong)i2 * nb[2] + (ulong)i3 * nb[3];
                        _dump.Write(type == 0 ? *(float*)e : (float)*(Half*)e);
                    }
        return 1;
    }
}
