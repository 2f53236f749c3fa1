namespace KvSharp.Models;

/// <summary>
/// Sees the residual stream of a forward pass (what scorers such as KVzip+ weigh attention by). Pass one to
/// <see cref="Transformer.Forward"/>; it is called on the forward pass's thread.
/// </summary>
public interface IForwardObserver
{
    /// <summary>
    /// Called at the start of <paramref name="layer"/> (before its attention norm) with the residual hidden states
    /// [count, hiddenSize] of the <paramref name="count"/> tokens being run, at positions
    /// <paramref name="firstPosition"/>.. (valid only during the call).
    /// </summary>
    void LayerInput(int layer, ReadOnlySpan<float> hidden, int count, int firstPosition);
}
