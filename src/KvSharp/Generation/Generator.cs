using System.Diagnostics;
using System.Text;
using KvSharp.Cache;
using KvSharp.Generation.Sampling;
using KvSharp.Models;
using KvSharp.Tokenization;

namespace KvSharp.Generation;

/// <summary>
/// The decode loop: prefill a prompt into a KV cache, then sample one token at a time, streaming
/// text as complete UTF-8 and stopping at EOS, a stop string, the token budget or a full context.
/// The cache may already hold earlier turns; the prompt continues from its length.
/// </summary>
public sealed class Generator
{
    /// <summary>
    /// Runs <paramref name="tokens"/> after everything the forward pass has seen and returns the next token, chosen with
    /// <paramref name="history"/> (prompt and generated so far, oldest first, ending with the tokens just run).
    /// </summary>
    public delegate int NextToken(int[] tokens, ReadOnlySpan<int> history);

    private readonly Transformer _model;
    private readonly ITokenizer _tokenizer;

    /// <summary>Creates a generator over <paramref name="model"/> and its <paramref name="tokenizer"/>.</summary>
    public Generator(Transformer model, ITokenizer tokenizer)
    {
        _model = model;
        _tokenizer = tokenizer;
    }

    /// <summary>
    /// Runs <paramref name="prompt"/> after whatever <paramref name="cache"/> holds and generates a
    /// continuation. <paramref name="onText"/> receives text as soon as it is safe to show (complete
    /// characters, never part of a stop string). Throws <see cref="KvSharpException"/> when the prompt
    /// does not fit the context.
    /// </summary>
    public GenerationResult Generate(
        IReadOnlyList<int> prompt, IKvCache cache, int contextLength, GenerationOptions options,
        Action<string>? onText = null, CancellationToken cancellation = default) =>
        Run(_tokenizer, _model.Config.MaxContext, tokens => _model.Forward(tokens, cache), () => cache.Length,
            prompt, contextLength, options, onText, cancellation, cache);

    /// <summary>
    /// The generation loop over any forward pass (the CUDA backend's too): <paramref name="forward"/> runs tokens after
    /// everything it has seen and returns the last one's logits; <paramref name="cachedTokens"/> says how many tokens
    /// its cache holds. Sampling, stop strings, end-of-sequence and streamed text work as in <see cref="Generate"/>.
    /// <paramref name="cache"/> is the engine cache behind <paramref name="forward"/>, needed only by
    /// <see cref="GenerationOptions.DecodeCompression"/>.
    /// </summary>
    public static GenerationResult Run(
        ITokenizer tokenizer, int maxContext, Func<int[], float[]> forward, Func<int> cachedTokens,
        IReadOnlyList<int> prompt, int contextLength, GenerationOptions options,
        Action<string>? onText = null, CancellationToken cancellation = default, IKvCache? cache = null)
    {
        options.Validate();
        var sampler = new Sampler(options.EffectiveSampler);
        return RunSteps(tokenizer, maxContext, (tokens, history) => sampler.Sample(forward(tokens), history), cachedTokens,
            prompt, contextLength, options, onText, cancellation, cache == null ? null : c => c.Start(cache));
    }

    /// <summary>
    /// The generation loop over a forward pass that also chooses the next token (the CUDA backend sampling on the device:
    /// <see cref="NextToken"/>), with options.EffectiveSampler's rules left to it. Stop strings, end-of-sequence and
    /// streamed text work as in <see cref="Generate"/>. <see cref="GenerationOptions.DecodeCompression"/> needs
    /// <paramref name="startDecode"/>, which starts its session over the cache behind <paramref name="next"/> once the
    /// prompt is prefilled (the CUDA backend's <c>CudaDecodePresses.Start</c>); without it, it is refused.
    /// </summary>
    public static GenerationResult Run(
        ITokenizer tokenizer, int maxContext, NextToken next, Func<int> cachedTokens,
        IReadOnlyList<int> prompt, int contextLength, GenerationOptions options,
        Action<string>? onText = null, CancellationToken cancellation = default, Func<IDecodeCompression, IDecodeSession>? startDecode = null)
    {
        options.Validate();
        return RunSteps(tokenizer, maxContext, next, cachedTokens, prompt, contextLength, options, onText, cancellation, startDecode);
    }

    /// <summary>The loop behind both <c>Run</c> overloads; <paramref name="options"/> are validated by the caller.</summary>
    private static GenerationResult RunSteps(
        ITokenizer tokenizer, int maxContext, NextToken step, Func<int> cachedTokens,
        IReadOnlyList<int> prompt, int contextLength, GenerationOptions options,
        Action<string>? onText, CancellationToken cancellation, Func<IDecodeCompression, IDecodeSession>? startDecode)
    {
        if (options.DecodeCompression is not null && startDecode is null)
            throw new KvSharpException("decode-time compression needs the KV cache behind this forward pass: pass the cache (or, for a device cache, the session starter)");
        if (prompt.Count == 0) throw new KvSharpException("the prompt is empty: give at least one token");
        int cached = cachedTokens();
        int free = contextLength - cached;
        if (prompt.Count > free)
            throw new KvSharpException(cached == 0
                ? $"the prompt has {prompt.Count} tokens but the context holds {contextLength}" + (contextLength < maxContext
                    ? $" (raise --ctx up to the model's {maxContext}, or shorten the prompt)"
                    : " (the model's full context): shorten the prompt")
                : $"the prompt has {prompt.Count} tokens but only {free} of the context's {contextLength} remain");

        var history = new List<int>(prompt);
        var generated = new List<int>();
        var eos = options.StopAtEos ? new HashSet<int>(tokenizer.EosIds) : [];
        var utf8 = Encoding.UTF8.GetDecoder();
        var stops = new StopStringMatcher(options.StopStrings);
        var text = new StringBuilder();
        var chars = new char[64];

        var sw = Stopwatch.StartNew();
        int next = step(prompt.ToArray(), System.Runtime.InteropServices.CollectionsMarshal.AsSpan(history));
        var prefill = sw.Elapsed;
        sw.Restart();

        StopReason reason = StopReason.MaxTokens;
        using var decode = options.DecodeCompression is { } compression ? startDecode!(compression) : null; // checked non-null above when set
        int steps = 0;
        while (generated.Count < options.MaxTokens)
        {
            if (cancellation.IsCancellationRequested) { reason = StopReason.Cancelled; break; }
            if (eos.Contains(next)) { reason = StopReason.EndOfSequence; break; }
            generated.Add(next);
            history.Add(next);

            if (!tokenizer.IsSpecial(next)) // control tokens (chat markers) are not text
            {
                var bytes = tokenizer.TokenBytes(next);
                int need = utf8.GetCharCount(bytes, flush: false);
                if (need > chars.Length) chars = new char[need * 2];
                int n = utf8.GetChars(bytes, 0, bytes.Length, chars, 0, flush: false);
                if (n > 0)
                {
                    var r = stops.Push(new string(chars, 0, n));
                    Emit(r.SafeText);
                    if (r.Stopped) { reason = StopReason.StopString; break; }
                }
            }
            if (generated.Count == options.MaxTokens) break;
            if (cachedTokens() >= contextLength) { reason = StopReason.ContextFull; break; }
            decode?.BeforeStep(++steps);
            next = step([next], System.Runtime.InteropServices.CollectionsMarshal.AsSpan(history));
            decode?.AfterStep(steps);
        }
        if (reason != StopReason.StopString)
        {
            int n = utf8.GetChars([], 0, 0, chars, 0, flush: true);
            var r = stops.Push(new string(chars, 0, n));
            Emit(r.SafeText);
            if (r.Stopped) reason = StopReason.StopString;
            else Emit(stops.Flush());
        }
        return new GenerationResult(generated, text.ToString(), reason, prompt.Count, prefill, sw.Elapsed);

        void Emit(string s)
        {
            if (s.Length == 0) return;
            text.Append(s);
            onText?.Invoke(s);
        }
    }
}
