namespace KvSharp.Compression;

/// <summary>
/// A KV-cache compression method applied to a prefilled cache: eviction, quantization or sharing. Most presses are
/// a <see cref="Presses.ScoredPress"/> (scorer × budget × action); presses compose with <see cref="Presses.SequentialPress"/>.
/// Build them from their text form with <see cref="Registry.PressRegistry.Parse"/>.
/// </summary>
public interface IKvPress
{
    /// <summary>The canonical text form: <see cref="Registry.PressRegistry.Parse"/> of it builds an identical press.</summary>
    string Text { get; }

    /// <summary>Compresses <see cref="PressContext.Cache"/> in place (its logical length does not change).</summary>
    void Compress(PressContext context);
}
