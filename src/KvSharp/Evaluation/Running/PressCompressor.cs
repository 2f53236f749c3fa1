using System.Globalization;
using KvSharp.Compression;
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
/// <c>snapkv</c>, <c>snapkv+pyramid:window=16</c>) gets the sweep's keep ratio as its <c>keep=</c> parameter; so does
/// <c>clusterkv[:params]</c>, whose ratio is the per-step recall budget (<see cref="ClusterKvCompressor"/>).
/// </summary>
public sealed class PressCompressorFactory : FullCacheFactory
{
    /// <inheritdoc />
    public override ICacheCompressor Create(string press, double keepRatio)
    {
        if (IsFullCache(press)) return NoCompression.Instance;
        string text = press.Trim();
        string keep = "keep=" + keepRatio.ToString("0.####", CultureInfo.InvariantCulture);
        if (Compression.Recall.ClusterKvOptions.Names(text)) // recall, not eviction: the ratio is its per-step budget
            return new ClusterKvCompressor(Compression.Recall.ClusterKvOptions.Parse(text + (text.Contains(':') ? "," : ":") + keep));
        // The ratio joins the parameters of the last part (its budget), as the registry routes them.
        int lastPlus = text.LastIndexOf('+'), lastColon = text.LastIndexOf(':'), lastClose = text.LastIndexOf(')');
        string withKeep = text + (lastColon > Math.Max(lastPlus, lastClose) ? "," + keep : ":" + keep);
        try { return new PressCompressor(PressRegistry.Parse(withKeep)); }
        catch (KvSharpException e) when (e.Message.Contains("unknown parameter 'keep'", StringComparison.Ordinal))
        {
            // A press without a keep ratio (kvsharer, kvtuner, kivi, ...) runs as given, in the keep-1 cell only.
            if (keepRatio != 1) throw new KvSharpException($"press '{text}' takes no keep ratio: run it with --keep 1");
            return new PressCompressor(PressRegistry.Parse(text));
        }
    }
}
