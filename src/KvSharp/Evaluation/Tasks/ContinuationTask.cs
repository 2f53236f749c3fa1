using KvSharp.Tokenization;

namespace KvSharp.Evaluation.Tasks;

/// <summary>
/// Language-model quality samples from a text file with one document per line (e.g. the TinyStories excerpt):
/// each distinct document, cut at a sentence end to fit the model's context, is split at the sentence end nearest to
/// <c>contextFraction</c> of its length into a context (compressed) and a continuation (scored).
/// </summary>
public static class ContinuationTask
{
    /// <summary>Up to <paramref name="count"/> samples from <paramref name="path"/>.</summary>
    public static IReadOnlyList<EvalSample> Load(string path, string task, int count, ITokenizer tokenizer, int maxContext, double contextFraction = 0.5)
    {
        if (!File.Exists(path)) throw new KvSharpException($"{path}: text file not found");
        if (!(contextFraction > 0 && contextFraction < 1)) throw new KvSharpException($"the context fraction must be in (0, 1), got {contextFraction}");
        var samples = new List<EvalSample>();
        var seen = new HashSet<string>();
        foreach (var raw in File.ReadLines(path))
        {
            if (samples.Count >= count) break;
            string doc = raw.Trim();
            if (doc.Length == 0 || !seen.Add(doc)) continue;
            var ends = SentenceEnds(doc);
            // The longest prefix ending a sentence that fits the context (BOS included).
            int cut = doc.Length;
            while (tokenizer.Encode(doc[..cut], addSpecial: true).Length > maxContext)
            {
                int previous = ends.LastOrDefault(e => e < cut);
                if (previous <= 0) { cut = 0; break; }
                cut = previous;
            }
            if (cut == 0) continue;
            doc = doc[..cut];
            var inside = ends.Where(e => e < doc.Length).ToList();
            if (inside.Count == 0) continue;
            int split = inside.MinBy(e => Math.Abs(e - (contextFraction * doc.Length)));
            samples.Add(new EvalSample(samples.Count.ToString(System.Globalization.CultureInfo.InvariantCulture), task, doc[..split], [], ScoreKind.StringMatchAll, 0)
            {
                Continuation = doc[split..],
            });
        }
        if (samples.Count == 0) throw new KvSharpException($"{path}: no document with at least two sentences fits {maxContext} tokens");
        return samples;
    }

    // Positions just after ". ", "! ", "? " (the space stays with the continuation).
    private static List<int> SentenceEnds(string doc)
    {
        var ends = new List<int>();
        for (int i = 1; i < doc.Length; i++)
            if (doc[i] == ' ' && doc[i - 1] is '.' or '!' or '?' or '"') ends.Add(i);
        ends.Add(doc.Length);
        return ends;
    }
}
