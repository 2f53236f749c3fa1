using KvSharp.Models;
using KvSharp.Models.Loading;

namespace KvSharp.Formats.Gguf;

public sealed unsafe partial class GgufWriter
{
    /// <summary>
    /// Writes <paramref name="weights"/> as a GGUF model llama.cpp can load (1-D F16/BF16 tensors are widened to F32): the
    /// <c>{arch}.*</c> hyperparameters, the tensors under their canonical names, and the vocabulary
    /// (every <c>tokenizer.*</c> key) copied from <paramref name="vocabularyGguf"/> when given
    /// (e.g. stories260K.gguf or a llama.cpp ggml-vocab-*.gguf), whose token count must equal the
    /// model's vocabulary size.
    /// </summary>
    /// <remarks>
    /// llama.cpp applies interleaved RoPE to "llama" models and half-split ("neox") to qwen2/qwen3,
    /// so, like its converter, Q/K rows (and their biases / norms) are permuted when the weights use
    /// the other pairing: the file then computes exactly what the weights do. Mistral is written as
    /// "llama" (llama.cpp has no separate Mistral architecture). Llama-3 RoPE scaling is written as a
    /// <c>rope_freqs.weight</c> tensor, as llama.cpp's converter does.
    /// </remarks>
    public static void WriteModel(ModelWeights weights, string path, string? vocabularyGguf = null, string? name = null)
    {
        var c = weights.Config;
        string arch = c.Architecture == "mistral" ? "llama" : c.Architecture;
        var fileStyle = arch is "qwen2" or "qwen3" ? RopeStyle.HalfSplit : RopeStyle.Interleaved;

        var w = new GgufWriter();
        w.Set("general.architecture", arch);
        w.Set("general.name", name ?? Path.GetFileNameWithoutExtension(path));
        w.Set($"{arch}.context_length", (uint)c.MaxContext);
        w.Set($"{arch}.embedding_length", (uint)c.HiddenSize);
        w.Set($"{arch}.block_count", (uint)c.NumLayers);
        w.Set($"{arch}.feed_forward_length", (uint)c.IntermediateSize);
        w.Set($"{arch}.attention.head_count", (uint)c.NumHeads);
        w.Set($"{arch}.attention.head_count_kv", (uint)c.NumKvHeads);
        w.Set($"{arch}.attention.key_length", (uint)c.HeadDim);
        w.Set($"{arch}.attention.value_length", (uint)c.HeadDim);
        w.Set($"{arch}.attention.layer_norm_rms_epsilon", c.RmsNormEps);
        w.Set($"{arch}.rope.dimension_count", (uint)c.HeadDim);
        w.Set($"{arch}.rope.freq_base", (float)c.RopeTheta);
        w.Set($"{arch}.vocab_size", (uint)c.VocabSize);
        if (c.RopeScaling is { } rs) w.Set($"{arch}.rope.scaling.original_context_length", (uint)rs.OriginalMaxPositions);

        if (vocabularyGguf != null)
        {
            using var vocab = GgufFile.Open(vocabularyGguf);
            int tokens = vocab.Metadata.TryGetValue("tokenizer.ggml.tokens", out var t) && t is string[] a ? a.Length
                : throw new ModelFormatException(vocabularyGguf, "no tokenizer.ggml.tokens array to copy the vocabulary from");
            if (tokens != c.VocabSize)
                throw new ModelFormatException(vocabularyGguf, $"vocabulary has {tokens} tokens but the model's vocabulary size is {c.VocabSize}");
            foreach (var (key, value) in vocab.Metadata)
                if (key.StartsWith("tokenizer.", StringComparison.Ordinal)) w.Set(key, value);
        }
        else
        {
            WritePlaceholderVocabulary(w, c.VocabSize);
            if (c.BosTokenId is int bos) w.Set("tokenizer.ggml.bos_token_id", (uint)bos);
            if (c.EosTokenIds.Count > 0) w.Set("tokenizer.ggml.eos_token_id", (uint)c.EosTokenIds[0]);
        }

        var written = new HashSet<string>(StringComparer.Ordinal);
        void Add(string tensorName)
        {
            if (!written.Add(tensorName) || weights.Find(tensorName) is not { } view) return;
            var rows = c.RopeStyle == fileStyle ? null : RopePermutation(tensorName, c, toInterleaved: fileStyle == RopeStyle.Interleaved);
            if (view.Shape.Length == 1 && view.Type is GgmlType.F16 or GgmlType.BF16)
            {
                // ggml's CPU multiply wants f32 norm weights and biases (llama.cpp's converter writes them so).
                var f32 = ToF32Bytes(view);
                if (rows != null) f32 = PermuteRows(new TensorView(tensorName, GgmlType.F32, view.Shape, (byte*)0, f32.Length), rows, f32);
                w.AddTensor(tensorName, GgmlType.F32, view.Shape, f32);
            }
            else if (rows == null) w.AddTensor(view, tensorName);
            else w.AddTensor(tensorName, view.Type, view.Shape, PermuteRows(view, rows));
        }
        foreach (var (tensorName, _) in WeightValidator.Expected(c)) Add(tensorName);
        if (weights.Find(TensorNames.Output) != null) Add(TensorNames.Output);
        if (c.RopeScaling is { } s && arch == "llama" && weights.Find(GgufConfigReader.RopeFreqsTensor) == null)
        {
            var factors = Llama3Scaling.Factors(s, c.RopeTheta, c.HeadDim).Select(f => (float)f).ToArray();
            var bytes = new byte[factors.Length * 4];
            Buffer.BlockCopy(factors, 0, bytes, 0, bytes.Length);
            w.AddTensor(GgufConfigReader.RopeFreqsTensor, GgmlType.F32, [factors.Length], bytes);
        }
        foreach (var tensorName in weights.Tensors.Keys.Order(StringComparer.Ordinal)) Add(tensorName); // anything else, e.g. rope_freqs
        w.Write(path);
    }

    /// <summary>
    /// The source row of each destination row when converting a q/k tensor between RoPE pairings
    /// (null for tensors RoPE does not touch). Half-split pairs (i, i+d/2) become interleaved pairs
    /// (2i, 2i+1): destination row 2i+j of a head takes source row j*d/2+i.
    /// </summary>
    internal static int[]? RopePermutation(string tensorName, ModelConfig c, bool toInterleaved)
    {
        int heads;
        string suffix = tensorName[(tensorName.IndexOf('.', tensorName.IndexOf('.') + 1) + 1)..];
        if (!tensorName.StartsWith("blk.", StringComparison.Ordinal)) return null;
        if (suffix is TensorNames.Suffix.Q or TensorNames.Suffix.QBias) heads = c.NumHeads;
        else if (suffix is TensorNames.Suffix.K or TensorNames.Suffix.KBias) heads = c.NumKvHeads;
        else if (suffix is TensorNames.Suffix.QNorm or TensorNames.Suffix.KNorm) heads = 1;
        else return null;
        int d = c.HeadDim, half = d / 2;
        var src = new int[heads * d];
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++)
                for (int j = 0; j < 2; j++)
                {
                    int interleaved = h * d + 2 * i + j, split = h * d + j * half + i;
                    if (toInterleaved) src[interleaved] = split;
                    else src[split] = interleaved;
                }
        return src;
    }

    private static byte[] ToF32Bytes(TensorView view)
    {
        var dst = new byte[view.ElementCount * 4];
        fixed (byte* d = dst)
        {
            for (long i = 0; i < view.ElementCount; i++)
                ((float*)d)[i] = view.Type == GgmlType.F16 ? (float)((Half*)view.Data)[i] : BitConverter.Int32BitsToSingle(((ushort*)view.Data)[i] << 16);
        }
        return dst;
    }

    private static byte[] PermuteRows(TensorView view, int[] srcRows, byte[]? source = null)
    {
        // 1-D tensors (biases, norms) permute elements; 2-D tensors permute whole rows (any block type).
        long rowBytes = view.Shape.Length == 1 ? GgmlTypeInfo.RowBytes(view.Type, 1) : GgmlTypeInfo.RowBytes(view.Type, view.Cols);
        if (view.Shape.Length == 1 && GgmlTypeInfo.BlockSize(view.Type) != 1)
            throw new KvSharpException($"{view.Name}: cannot permute a block-quantized vector");
        if (srcRows.Length * rowBytes != view.ByteLength)
            throw new KvSharpException($"{view.Name}: shape [{string.Join(", ", view.Shape)}] does not match the RoPE permutation of {srcRows.Length} rows");
        var dst = new byte[view.ByteLength];
        fixed (byte* managed = source)
        {
            byte* src = source != null ? managed : view.Data;
            for (int r = 0; r < srcRows.Length; r++)
                new ReadOnlySpan<byte>(src + srcRows[r] * rowBytes, (int)rowBytes).CopyTo(dst.AsSpan((int)(r * rowBytes)));
        }
        return dst;
    }

    /// <summary>
    /// A valid but meaningless SentencePiece-style vocabulary of <paramref name="size"/> tokens (unk, BOS, EOS,
    /// 256 byte tokens when they fit, "▁", then "▁tok{i}"), so a model without its own GGUF vocabulary (dummy weights, a
    /// Hugging Face checkpoint whose tokenizer.json cannot be expressed here) still loads in llama.cpp.
    /// </summary>
    private static void WritePlaceholderVocabulary(GgufWriter w, int size)
    {
        if (size < 3) return; // too small for unk/BOS/EOS: leave the file without a vocabulary
        bool bytes = size >= 259; // byte-fallback tokens only when they fit
        var tokens = new string[size];
        var scores = new float[size];
        var types = new int[size];
        for (int i = 0; i < size; i++)
        {
            (tokens[i], types[i]) = i switch
            {
                0 => ("<unk>", 2),
                1 => ("<s>", 3),
                2 => ("</s>", 3),
                < 259 when bytes => ($"<0x{i - 3:X2}>", 6),
                259 => ("\u2581", 1), // the space piece, so text round-trips through byte fallback
                _ => ($"\u2581tok{i}", 1),
            };
            scores[i] = -i;
        }
        w.Set("tokenizer.ggml.model", "llama");
        w.Set("tokenizer.ggml.tokens", tokens);
        w.Set("tokenizer.ggml.scores", scores);
        w.Set("tokenizer.ggml.token_type", types);
    }
}
