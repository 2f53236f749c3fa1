namespace KvSharp.Evaluation.Metrics;

/// <summary>
/// How well a (compressed-cache) run predicts a text continuation, and how close its next-token distributions stay
/// to the full cache's.
/// </summary>
/// <param name="Tokens">Continuation tokens scored.</param>
/// <param name="Perplexity">exp of the mean negative log-likelihood of the continuation's tokens.</param>
/// <param name="ReferencePerplexity">The same under the full cache.</param>
/// <param name="MeanKl">Mean over positions of KL(full ‖ compressed) of the next-token distributions, in nats.</param>
/// <param name="Top1Agreement">Fraction of positions whose most likely next token is the same under both caches.</param>
public sealed record ContinuationQuality(int Tokens, double Perplexity, double ReferencePerplexity, double MeanKl, double Top1Agreement);

/// <summary>Per-position language-model metrics over logit rows, computed in float64.</summary>
public static class LanguageModelMetrics
{
    /// <summary>−log softmax(<paramref name="logits"/>)[<paramref name="target"/>].</summary>
    public static double NegativeLogLikelihood(ReadOnlySpan<float> logits, int target)
    {
        if ((uint)target >= (uint)logits.Length) throw new ArgumentOutOfRangeException(nameof(target));
        return LogSumExp(logits) - logits[target];
    }

    /// <summary>KL(P ‖ Q) = Σ p log(p / q) of the softmax distributions of two logit rows, in nats.</summary>
    public static double KlDivergence(ReadOnlySpan<float> reference, ReadOnlySpan<float> other)
    {
        if (reference.Length != other.Length) throw new ArgumentException("logit rows differ in length");
        double lp = LogSumExp(reference), lq = LogSumExp(other), kl = 0;
        for (int i = 0; i < reference.Length; i++)
        {
            double logP = reference[i] - lp;
            double p = Math.Exp(logP);
            if (p > 0) kl += p * (logP - (other[i] - lq));
        }
        return Math.Max(kl, 0); // rounding can leave a tiny negative for identical rows
    }

    /// <summary>Index of the largest logit (the first on ties), as greedy decoding picks.</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    /// <summary>exp(mean of <paramref name="negativeLogLikelihoods"/>).</summary>
    public static double Perplexity(IReadOnlyCollection<double> negativeLogLikelihoods)
    {
        if (negativeLogLikelihoods.Count == 0) throw new KvSharpException("perplexity needs at least one token");
        return Math.Exp(negativeLogLikelihoods.Average());
    }

    /// <summary>
    /// Scores <paramref name="targets"/> against row-major logit rows ([targets.Length, vocab]; row i predicts
    /// targets[i]) of a compressed run and of the full-cache reference.
    /// </summary>
    public static ContinuationQuality Compare(ReadOnlySpan<float> reference, ReadOnlySpan<float> compressed, ReadOnlySpan<int> targets, int vocab)
    {
        int n = targets.Length;
        if (n == 0) throw new KvSharpException("the continuation has no tokens to score");
        if (reference.Length != n * vocab || compressed.Length != n * vocab) throw new ArgumentException("logit rows do not match the targets");
        var nll = new double[n];
        var refNll = new double[n];
        double kl = 0;
        int agree = 0;
        for (int i = 0; i < n; i++)
        {
            var r = reference.Slice(i * vocab, vocab);
            var c = compressed.Slice(i * vocab, vocab);
            nll[i] = NegativeLogLikelihood(c, targets[i]);
            refNll[i] = NegativeLogLikelihood(r, targets[i]);
            kl += KlDivergence(r, c);
            if (ArgMax(r) == ArgMax(c)) agree++;
        }
        return new ContinuationQuality(n, Perplexity(nll), Perplexity(refNll), kl / n, agree / (double)n);
    }

    private static double LogSumExp(ReadOnlySpan<float> logits)
    {
        double max = double.NegativeInfinity;
        foreach (float x in logits) if (x > max) max = x;
        double sum = 0;
        foreach (float x in logits) sum += Math.Exp(x - max);
        return max + Math.Log(sum);
    }
}
