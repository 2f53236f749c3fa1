namespace KvSharp.Models;

/// <summary>How rotary position embedding pairs the dimensions of a head.</summary>
public enum RopeStyle
{
    /// <summary>Pairs (2i, 2i+1): GGUF "llama" / llama2.c / Meta's original layout.</summary>
    Interleaved,
    /// <summary>Pairs (i, i + d/2): Hugging Face transformers' rotate_half (GGUF "neox" mode).</summary>
    HalfSplit,
}

/// <summary>Llama-3 style frequency-dependent RoPE scaling ("rope_type": "llama3").</summary>
/// <param name="Factor">Scale applied to low frequencies (e.g. 8).</param>
/// <param name="LowFreqFactor">Wavelengths above original/low_freq_factor are fully scaled (e.g. 1).</param>
/// <param name="HighFreqFactor">Wavelengths below original/high_freq_factor are untouched (e.g. 4).</param>
/// <param name="OriginalMaxPositions">Training context of the unscaled model (e.g. 8192).</param>
public sealed record Llama3RopeScaling(double Factor, double LowFreqFactor, double HighFreqFactor, int OriginalMaxPositions);

/// <summary>
/// Everything the transformer needs to know about a Llama-family decoder, read from a model's
/// metadata (GGUF keys or Hugging Face config.json); nothing is hard-coded per model.
/// </summary>
public sealed record ModelConfig
{
    /// <summary>Architecture name as the file gives it ("llama", "qwen2", "qwen3", "mistral", ...).</summary>
    public required string Architecture { get; init; }
    /// <summary>Vocabulary size (rows of the embedding).</summary>
    public required int VocabSize { get; init; }
    /// <summary>Model width.</summary>
    public required int HiddenSize { get; init; }
    /// <summary>Width of the SwiGLU feed-forward layer.</summary>
    public required int IntermediateSize { get; init; }
    /// <summary>Number of decoder layers.</summary>
    public required int NumLayers { get; init; }
    /// <summary>Query heads.</summary>
    public required int NumHeads { get; init; }
    /// <summary>Key/value heads (grouped-query attention when fewer than <see cref="NumHeads"/>).</summary>
    public required int NumKvHeads { get; init; }
    /// <summary>Dimension of one head.</summary>
    public required int HeadDim { get; init; }
    /// <summary>RMSNorm epsilon.</summary>
    public float RmsNormEps { get; init; } = 1e-5f;
    /// <summary>RoPE base frequency.</summary>
    public double RopeTheta { get; init; } = 10000.0;
    /// <summary>Pairing convention of RoPE.</summary>
    public RopeStyle RopeStyle { get; init; } = RopeStyle.HalfSplit;
    /// <summary>Llama-3 RoPE scaling, when the model uses it.</summary>
    public Llama3RopeScaling? RopeScaling { get; init; }
    /// <summary>Maximum context length the model was trained for.</summary>
    public int MaxContext { get; init; } = 2048;
    /// <summary>Whether q/k/v projections have biases (Qwen2).</summary>
    public bool AttentionBias { get; init; }
    /// <summary>Whether q and k get a per-head RMSNorm before RoPE (Qwen3).</summary>
    public bool QkNorm { get; init; }
    /// <summary>Whether the output projection reuses the token embedding.</summary>
    public bool TieEmbeddings { get; init; }
    /// <summary>Beginning-of-sequence token id, if any.</summary>
    public int? BosTokenId { get; init; }
    /// <summary>End-of-sequence token ids (generation stops at any).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = Array.Empty<int>();

    /// <summary>Query heads per KV head.</summary>
    public int GroupSize => NumHeads / NumKvHeads;

    /// <summary>Bytes of K and V per token at <paramref name="bytesPerElement"/> (2 = F16 cache).</summary>
    public long KvBytesPerToken(double bytesPerElement = 2) => (long)(2L * NumLayers * NumKvHeads * HeadDim * bytesPerElement);

    /// <summary>Throws a clear error when the dimensions contradict each other.</summary>
    public void Validate(string source)
    {
        void Check(bool ok, string what) { if (!ok) throw new ModelFormatException(source, what); }
        Check(VocabSize > 0, $"vocabulary size {VocabSize} must be positive");
        Check(HiddenSize > 0 && NumLayers > 0 && NumHeads > 0 && NumKvHeads > 0 && HeadDim > 0 && IntermediateSize > 0,
            "hidden size, layers, heads, KV heads, head dim and intermediate size must all be positive");
        Check(NumHeads % NumKvHeads == 0, $"{NumHeads} attention heads are not a multiple of {NumKvHeads} KV heads");
        Check(HeadDim % 2 == 0, $"head dim {HeadDim} must be even for RoPE");
        Check(MaxContext > 0, $"context length {MaxContext} must be positive");
    }
}
