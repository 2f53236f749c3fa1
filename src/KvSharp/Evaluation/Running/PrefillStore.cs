using KvSharp.Cache.Paged;

namespace KvSharp.Evaluation.Running;

/// <summary>
/// Prefilled contexts shared by the cells of a sweep: every cell of one (model, task) runs the same samples, and their
/// prefill does not depend on the press, so each sample's context is prefilled once and every cell compresses a
/// copy-on-write <see cref="PagedKvCache.Fork"/> of it (forks share the encoded blocks; a press writes new ones). The
/// reported prefill time is the one measured run. Continuation samples also keep the full cache's logits.
/// </summary>
public sealed class PrefillStore : IDisposable
{
    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);

    private sealed record Entry(PagedKvCache Cache, double Seconds, float[]? ReferenceLogits);

    /// <summary>Prefilled contexts held.</summary>
    public int Count => _entries.Count;

    /// <summary>
    /// A fork of the cache stored under <paramref name="key"/> and its prefill seconds (and the reference logits of a
    /// continuation), or null when nothing is stored. The caller disposes the fork.
    /// </summary>
    public (PagedKvCache Cache, double Seconds, float[]? ReferenceLogits)? TryFork(string key)
    {
        if (!_entries.TryGetValue(key, out var e)) return null;
        return (e.Cache.Fork(), e.Seconds, e.ReferenceLogits);
    }

    /// <summary>Keeps a fork of <paramref name="prefilled"/> (which the caller goes on using) under <paramref name="key"/>.</summary>
    public void Add(string key, PagedKvCache prefilled, double seconds, float[]? referenceLogits = null)
    {
        ArgumentNullException.ThrowIfNull(prefilled);
        if (_entries.ContainsKey(key)) throw new KvSharpException($"prefill '{key}' is stored twice");
        _entries[key] = new Entry(prefilled.Fork(), seconds, referenceLogits);
    }

    /// <summary>The key of a sample's prefill: its task, id and texts (the first question decides the context's last tokens).</summary>
    public static string KeyOf(Tasks.EvalSample sample)
    {
        ArgumentNullException.ThrowIfNull(sample);
        string question = sample.Continuation ?? (sample.Queries.Count > 0 ? sample.Queries[0].Question : "");
        return string.Join('\u0001', sample.Task, sample.Id, sample.Context, question);
    }

    /// <summary>Releases every stored cache.</summary>
    public void Dispose()
    {
        foreach (var e in _entries.Values) e.Cache.Dispose();
        _entries.Clear();
    }
}
