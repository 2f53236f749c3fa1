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
/// <c>clusterkv[:params]</c>, whose ratio is the per-step recall budget (<see cref="ClusterKvCompressor"/>). A press
/// that takes no keep ratio (a quantizer such as <c>kivi:bits=2</c>, a dynamic budget such as <c>dbudgetkv</c>, a
/// calibrated map such as <c>kvsharer:file=F</c>, or a text that already names its budget) is built as written.
/// </summary>
public sealed class PressCompressorFactory : FullCacheFactory
{
    /// <inheritdoc />
    public override ICacheCompressor Create(string press, double keepRatio)
    {
        if (IsFullCache(press)) return NoCompression.Instance;
        if (Compression.Recall.ClusterKvOptions.Names(press.Trim())) // recall, not eviction: the ratio is its per-step budget
            return new ClusterKvCompressor(Compression.Recall.ClusterKvOptions.Parse(WithKeep(press, keepRatio)));
        if (!TakesKeepRatio(press))
        {
            // A sweep runs such a press in one keep-1 cell; any other ratio asked of it is a mistake to name.
            if (keepRatio != 1) throw new KvSharpException($"press '{press.Trim()}' takes no keep ratio: run it with --keep 1");
            return new PressCompressor(PressRegistry.Parse(press));
        }
        return new PressCompressor(PressRegistry.Parse(WithKeep(press, keepRatio)));
    }

    /// <inheritdoc />
    public override bool TakesKeepRatio(string press)
    {
        if (IsFullCache(press)) return false;
        if (Compression.Recall.ClusterKvOptions.Names(press.Trim())) return true;
        _ = PressRegistry.Parse(press); // a malformed press is an error here, with the registry's message
        // The registry refuses a keep= the press does not declare (or gives twice): then the press has its own budget.
        try
        {
            PressRegistry.Parse(WithKeep(press, 0.5));
            return true;
        }
        catch (KvSharpException)
        {
            return false;
        }
    }

    private static string WithKeep(string press, double keepRatio)
    {
        string text = press.Trim();
        string keep = "keep=" + keepRatio.ToString("0.####", CultureInfo.InvariantCulture);
        // The ratio joins the parameters of the last part (its budget), as the registry routes them.
        int lastPlus = text.LastIndexOf('+'), lastColon = text.LastIndexOf(':'), lastClose = text.LastIndexOf(')');
        return text + (lastColon > Math.Max(lastPlus, lastClose) ? "," + keep : ":" + keep);
    }
}
