using System.Globalization;
using KvSharp.Compression;
using KvSharp.Compression.Quantization;
using KvSharp.Compression.Registry;

namespace KvSharp.Evaluation.Running;

/// <summary>A registered press (<see cref="PressRegistry"/>) as the compression step of an evaluation cell.</summary>
public sealed class PressCompressor : ICacheCompressor
{
    private readonly IKvPress _press;

    /// <summary>Wraps <paramref name="press"/>.</summary>
    public PressCompressor(IKvPress press) { _press = press ?? throw new ArgumentNullException(nameof(press)); }

    /// <inheritdoc />
    public string Name => _press.Text;

    /// <inheritdoc />
    public void Compress(CompressionInput input)
    {
        ArgumentNullException.ThrowIfNull(input);
        var model = input.Model;
        // PressContext.For's tokenizer and template (a base model gets plain-text prompts), plus the protected prefix and question.
        _press.Compress(new PressContext(model.Transformer, input.Cache, input.ContextTokens)
        {
            ProtectedPrefix = input.ProtectedPrefix,
            Question = input.QuestionTokens,
            Tokenizer = model.Tokenizer,
            ChatTemplate = model.ChatTemplateText != null ? model.ChatTemplate : null,
        });
    }
}

/// <summary>
/// The full cache (<c>none</c>) and every press of <see cref="PressRegistry"/>: a press name or text form (e.g.
/// <c>snapkv</c>, <c>snapkv+pyramid:window=16</c>) gets the sweep's keep ratio as its <c>keep=</c> parameter; a press
/// ending in a quantization press (e.g. <c>vidkv:residual=32</c>) runs as written at keep 1.
/// </summary>
public sealed class PressCompressorFactory : FullCacheFactory
{
    /// <inheritdoc />
    public override ICacheCompressor Create(string press, double keepRatio)
    {
        if (IsFullCache(press)) return NoCompression.Instance;
        string text = press.Trim();
        string keep = "keep=" + keepRatio.ToString("0.####", CultureInfo.InvariantCulture);
        // The ratio joins the parameters of the last part (its budget), as the registry routes them.
        int lastPlus = text.LastIndexOf('+'), lastColon = text.LastIndexOf(':'), lastClose = text.LastIndexOf(')');
        // A quantization press (kivi, vidkv, ...) has no keep ratio: at keep 1 it runs as written.
        if (keepRatio == 1 && QuantizationPresses.Names(text[(lastPlus + 1)..].Trim())) return new PressCompressor(PressRegistry.Parse(text));
        text += lastColon > Math.Max(lastPlus, lastClose) ? "," + keep : ":" + keep;
        return new PressCompressor(PressRegistry.Parse(text));
    }
}
