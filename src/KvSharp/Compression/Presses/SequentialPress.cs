namespace KvSharp.Compression.Presses;

/// <summary>Presses applied one after the other (text form <c>a + b</c>); each later press sees what the earlier ones left.</summary>
public sealed class SequentialPress : IKvPress
{
    /// <summary>Composes <paramref name="presses"/> (at least two).</summary>
    public SequentialPress(IReadOnlyList<IKvPress> presses)
    {
        ArgumentNullException.ThrowIfNull(presses);
        if (presses.Count < 2) throw new ArgumentException("a sequence needs at least two presses", nameof(presses));
        Presses = presses;
    }

    /// <summary>The presses, in order.</summary>
    public IReadOnlyList<IKvPress> Presses { get; }

    /// <inheritdoc />
    public string Text => string.Join(" + ", Presses.Select(p => p.Text));

    /// <inheritdoc />
    public void Compress(PressContext context)
    {
        foreach (var p in Presses) p.Compress(context);
    }
}
