using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace KvSharp.Tokenization;

/// <summary>
/// Builds a tokenizer from a Hugging Face <c>tokenizer.json</c> (BPE models: byte-level with Split
/// regex / ByteLevel / Digits pre-tokenizers, or SentencePiece-style with '▁' normalizers or
/// Metaspace and byte fallback), its added tokens and post-processor, plus the BOS/EOS settings of
/// <c>tokenizer_config.json</c> and <c>generation_config.json</c> beside it.
/// </summary>
internal static class HfTokenizerReader
{
    /// <param name="tokenizerJson">tokenizer.json.</param>
    /// <param name="tokenizerConfig">tokenizer_config.json, if any.</param>
    /// <param name="idConfigs">Files with <c>bos_token_id</c>/<c>eos_token_id</c> (generation_config.json, config.json), in priority order.</param>
    public static ITokenizer Read(string tokenizerJson, string? tokenizerConfig, IEnumerable<string> idConfigs)
    {
        using var doc = Parse(tokenizerJson);
        var root = doc.RootElement;
        var model = Obj(root, "model") ?? throw Bad(tokenizerJson, "has no 'model'");
        string type = Str(model, "type") ?? (model.TryGetProperty("merges", out _) ? "BPE" : "?");
        if (type != "BPE") throw Bad(tokenizerJson, $"model type '{type}' is not supported (supported: BPE)");
        foreach (var affix in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (Str(model, affix) is { Length: > 0 } v) throw Bad(tokenizerJson, $"BPE {affix} '{v}' is not supported");

        // Vocabulary: model vocab plus added tokens.
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in (Obj(model, "vocab") ?? throw Bad(tokenizerJson, "model has no 'vocab'")).EnumerateObject())
            vocab[p.Name] = p.Value.GetInt32();
        var added = new List<(string Content, int Id, bool Special, bool LStrip, bool RStrip, bool Normalized)>();
        if (Obj(root, "added_tokens") is { ValueKind: JsonValueKind.Array } at)
        {
            foreach (var t in at.EnumerateArray())
            {
                added.Add((Str(t, "content") ?? throw Bad(tokenizerJson, "added token without 'content'"),
                    t.GetProperty("id").GetInt32(), Bool(t, "special") ?? false, Bool(t, "lstrip") ?? false,
                    Bool(t, "rstrip") ?? false, Bool(t, "normalized") ?? false));
            }
        }
        int size = Math.Max(vocab.Count == 0 ? 0 : vocab.Values.Max() + 1, added.Count == 0 ? 0 : added.Max(a => a.Id) + 1);
        var tokens = new string[size];
        var kinds = new TokenKind[size];
        Array.Fill(tokens, "");
        Array.Fill(kinds, TokenKind.Unused);
        bool byteFallback = Bool(model, "byte_fallback") ?? false;
        foreach (var (text, id) in vocab)
        {
            if (id < 0) throw Bad(tokenizerJson, $"negative id {id} for '{text}'");
            tokens[id] = text;
            kinds[id] = byteFallback && VocabTokenizer.TryParseByteToken(text, out _) ? TokenKind.Byte : TokenKind.Normal;
        }
        var addedIds = new HashSet<int>();
        foreach (var a in added)
        {
            tokens[a.Id] = a.Content;
            kinds[a.Id] = a.Special ? TokenKind.Control : TokenKind.UserDefined;
            vocab.TryAdd(a.Content, a.Id);
            addedIds.Add(a.Id);
        }
        int? unk = Str(model, "unk_token") is string u && vocab.TryGetValue(u, out int uid) ? uid : null;
        if (unk is int unkId) kinds[unkId] = TokenKind.Unknown;

        // Merges: "a b" strings or ["a", "b"] pairs.
        var merges = new List<(string, string)>();
        if (Obj(model, "merges") is { ValueKind: JsonValueKind.Array } ms)
        {
            foreach (var m in ms.EnumerateArray())
            {
                if (m.ValueKind == JsonValueKind.String) merges.Add(GgufTokenizerReader.SplitMerge(tokenizerJson, m.GetString()!));
                else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2) merges.Add((m[0].GetString()!, m[1].GetString()!));
                else throw Bad(tokenizerJson, $"malformed merge {m}");
            }
        }

        // Normalizer and pre-tokenizer.
        var builder = new PipelineBuilder(tokenizerJson, allAddedNormalized: added.Count > 0 && added.All(a => a.Normalized));
        if (Obj(root, "normalizer") is { ValueKind: JsonValueKind.Object } norm) builder.AddNormalizer(norm);
        if (Obj(root, "pre_tokenizer") is { ValueKind: JsonValueKind.Object } pre) builder.AddPreTokenizer(pre);
        var decoder = Obj(root, "decoder");
        bool byteLevelDecoder = decoder is { ValueKind: JsonValueKind.Object } d && Mentions(d, "ByteLevel");
        bool byteLevel = builder.ByteLevel || byteLevelDecoder;

        var options = new BpeOptions
        {
            PreTokenizer = builder.Patterns.Count > 0 ? new RegexPreTokenizer(builder.Patterns) : null,
            ByteLevel = byteLevel,
            ByteFallback = byteFallback,
            UnkId = unk,
            FuseUnk = Bool(model, "fuse_unk") ?? false,
            IgnoreMerges = Bool(model, "ignore_merges") ?? false,
            Normalize = builder.Normalize,
            Prepend = builder.Prepend,
            PrependMode = builder.PrependMode,
            PrependBeforeLeadingToken = builder.PrependBeforeLeadingToken,
            SplitOnMetaspace = builder.SplitOnMetaspace,
        };
        bool strip = decoder is { ValueKind: JsonValueKind.Object } dd && StripsLeadingSpace(dd);

        // Post-processor: what addSpecial puts around the sequence.
        var prefix = new List<int>();
        var suffix = new List<int>();
        if (Obj(root, "post_processor") is { ValueKind: JsonValueKind.Object } post) ReadPostProcessor(tokenizerJson, post, vocab, prefix, suffix);

        // tokenizer_config.json / generation_config.json: BOS/EOS identities and add_bos_token.
        int? bos = null;
        var eos = new List<int>();
        bool? addBos = null;
        if (tokenizerConfig != null)
        {
            using var cfg = Parse(tokenizerConfig);
            bos = TokenRef(cfg.RootElement, "bos_token", vocab);
            if (TokenRef(cfg.RootElement, "eos_token", vocab) is int e) eos.Add(e);
            addBos = Bool(cfg.RootElement, "add_bos_token");
        }
        foreach (var idConfig in idConfigs)
        {
            using var gen = Parse(idConfig);
            if (eos.Count == 0 && Obj(gen.RootElement, "eos_token_id") is { } ge)
            {
                foreach (var v in ge.ValueKind == JsonValueKind.Array ? ge.EnumerateArray().ToArray() : [ge])
                    if (v.ValueKind == JsonValueKind.Number && v.GetInt32() is int id && id >= 0 && id < size && !eos.Contains(id)) eos.Add(id);
            }
            if (bos == null && Obj(gen.RootElement, "bos_token_id") is { ValueKind: JsonValueKind.Number } gb && gb.GetInt32() is int b && b >= 0 && b < size)
                bos = b;
        }
        if (bos == null && prefix.Count > 0) bos = prefix[0];
        if (addBos == true && bos is int bb && !prefix.Contains(bb)) prefix.Insert(0, bb);
        if (addBos == false && bos is int nb) prefix.Remove(nb);

        var literal = added.Select(a => new AddedToken(a.Content, a.Id, a.Special, a.LStrip, a.RStrip));
        Func<int, byte[]> piece = id =>
            addedIds.Contains(id) ? Encoding.UTF8.GetBytes(tokens[id])
            : byteLevel ? BpeTokenizer.ByteLevelPiece(tokens[id])
            : BpeTokenizer.MetaspacePiece(tokens[id]);
        return new BpeTokenizer(tokens, kinds, vocab, BpeMerges.Build(merges, vocab), options, literal, piece,
            bos, eos, prefix.ToArray(), suffix.ToArray(), strip);
    }

    private sealed class PipelineBuilder(string path, bool allAddedNormalized)
    {
        private readonly List<Func<string, string>> _normalizers = new();
        public List<string> Patterns { get; } = new();
        public bool ByteLevel { get; private set; }
        public string Prepend { get; private set; } = "";
        public PrependMode PrependMode { get; private set; }
        public bool PrependBeforeLeadingToken { get; private set; }
        public bool SplitOnMetaspace { get; private set; }

        public Func<string, string>? Normalize => _normalizers.Count == 0 ? null : s =>
        {
            foreach (var f in _normalizers) s = f(s);
            return s;
        };

        public void AddNormalizer(JsonElement n)
        {
            switch (Str(n, "type"))
            {
                case "Sequence":
                    foreach (var c in n.GetProperty("normalizers").EnumerateArray()) AddNormalizer(c);
                    break;
                case "NFC": _normalizers.Add(s => UnicodeNormalize(s, NormalizationForm.FormC)); break;
                case "NFD": _normalizers.Add(s => UnicodeNormalize(s, NormalizationForm.FormD)); break;
                case "NFKC": _normalizers.Add(s => UnicodeNormalize(s, NormalizationForm.FormKC)); break;
                case "NFKD": _normalizers.Add(s => UnicodeNormalize(s, NormalizationForm.FormKD)); break;
                case "Lowercase": _normalizers.Add(s => s.ToLowerInvariant()); break;
                case "Prepend":
                    // Applied to the whole input when added tokens are matched after normalization,
                    // else to every piece between added tokens (Hugging Face's order of operations).
                    Prepend = Str(n, "prepend") ?? "";
                    PrependMode = allAddedNormalized ? PrependMode.First : PrependMode.Always;
                    PrependBeforeLeadingToken = allAddedNormalized;
                    break;
                case "Replace":
                    {
                        string content = Str(n, "content") ?? "";
                        var pattern = n.GetProperty("pattern");
                        if (Str(pattern, "String") is string lit) _normalizers.Add(s => s.Replace(lit, content, StringComparison.Ordinal));
                        else if (Str(pattern, "Regex") is string rx)
                        {
                            var re = new Regex(rx, RegexOptions.CultureInvariant);
                            _normalizers.Add(s => re.Replace(s, content));
                        }
                        break;
                    }
                default: throw Bad(path, $"normalizer '{Str(n, "type")}' is not supported");
            }
        }

        public void AddPreTokenizer(JsonElement p)
        {
            switch (Str(p, "type"))
            {
                case "Sequence":
                    foreach (var c in p.GetProperty("pretokenizers").EnumerateArray()) AddPreTokenizer(c);
                    break;
                case "Split":
                    {
                        if (Str(p, "behavior") is string b && b != "Isolated") throw Bad(path, $"Split behavior '{b}' is not supported (supported: Isolated)");
                        if (Bool(p, "invert") == true) throw Bad(path, "inverted Split is not supported");
                        var pattern = p.GetProperty("pattern");
                        Patterns.Add(Str(pattern, "Regex") ?? Regex.Escape(Str(pattern, "String") ?? ""));
                        break;
                    }
                case "ByteLevel":
                    ByteLevel = true;
                    if (Bool(p, "add_prefix_space") == true) throw Bad(path, "ByteLevel add_prefix_space is not supported");
                    if (Bool(p, "use_regex") ?? true) Patterns.Add(PreTokenizerPatterns.Gpt2);
                    break;
                case "Digits":
                    // Rust char::is_numeric: any \p{N} character.
                    Patterns.Add(Bool(p, "individual_digits") == true ? @"\p{N}" : @"\p{N}+");
                    break;
                case "Metaspace":
                    {
                        string rep = Str(p, "replacement") ?? "\u2581";
                        _normalizers.Add(s => s.Replace(" ", rep, StringComparison.Ordinal));
                        string scheme = Str(p, "prepend_scheme") ?? (Bool(p, "add_prefix_space") == false ? "never" : "always");
                        Prepend = rep;
                        PrependMode = scheme switch { "always" => PrependMode.Always, "first" => PrependMode.First, _ => PrependMode.Never };
                        PrependBeforeLeadingToken = false;
                        SplitOnMetaspace = Bool(p, "split") ?? true;
                        break;
                    }
                default: throw Bad(path, $"pre-tokenizer '{Str(p, "type")}' is not supported");
            }
        }
    }

    /// <summary>
    /// Unicode normalization; text is left as is where the runtime cannot normalize (globalization-
    /// invariant mode without ICU), which only matters for input not already in that form.
    /// </summary>
    private static string UnicodeNormalize(string s, NormalizationForm form)
    {
        try
        {
            return s.IsNormalized(form) ? s : s.Normalize(form);
        }
        catch (PlatformNotSupportedException) { return s; }
    }

    private static void ReadPostProcessor(string path, JsonElement post, Dictionary<string, int> vocab, List<int> prefix, List<int> suffix)
    {
        switch (Str(post, "type"))
        {
            case "Sequence":
                foreach (var c in post.GetProperty("processors").EnumerateArray()) ReadPostProcessor(path, c, vocab, prefix, suffix);
                break;
            case "ByteLevel": break; // offsets only
            case "TemplateProcessing":
                {
                    var specials = Obj(post, "special_tokens");
                    bool seenSequence = false;
                    foreach (var item in post.GetProperty("single").EnumerateArray())
                    {
                        if (item.TryGetProperty("Sequence", out _)) { seenSequence = true; continue; }
                        if (!item.TryGetProperty("SpecialToken", out var st)) continue;
                        string name = Str(st, "id") ?? "";
                        IEnumerable<int> ids = specials is { } sp && sp.TryGetProperty(name, out var def) && def.TryGetProperty("ids", out var idArr)
                            ? idArr.EnumerateArray().Select(x => x.GetInt32()).ToArray()
                            : vocab.TryGetValue(name, out int id) ? [id] : throw Bad(path, $"post-processor token '{name}' is not in the vocabulary");
                        (seenSequence ? suffix : prefix).AddRange(ids);
                    }
                    break;
                }
            case "BertProcessing":
            case "RobertaProcessing":
                prefix.Add(post.GetProperty("cls")[1].GetInt32());
                suffix.Add(post.GetProperty("sep")[1].GetInt32());
                break;
            default: throw Bad(path, $"post-processor '{Str(post, "type")}' is not supported");
        }
    }

    private static bool StripsLeadingSpace(JsonElement d) => Str(d, "type") switch
    {
        "Sequence" => d.GetProperty("decoders").EnumerateArray().Any(StripsLeadingSpace),
        "Strip" => (d.TryGetProperty("start", out var s) ? s.GetInt32() : 0) > 0,
        "Metaspace" => (Str(d, "prepend_scheme") ?? (Bool(d, "add_prefix_space") == false ? "never" : "always")) != "never",
        _ => false,
    };

    private static bool Mentions(JsonElement d, string type) => Str(d, "type") == type
        || (Str(d, "type") == "Sequence" && d.TryGetProperty("decoders", out var ds) && ds.EnumerateArray().Any(x => Mentions(x, type)));

    private static int? TokenRef(JsonElement cfg, string key, Dictionary<string, int> vocab)
    {
        if (!cfg.TryGetProperty(key, out var v)) return null;
        string? text = v.ValueKind switch
        {
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object => Str(v, "content"),
            _ => null,
        };
        return text != null && vocab.TryGetValue(text, out int id) ? id : null;
    }

    private static JsonDocument Parse(string path)
    {
        try
        {
            return JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { AllowTrailingCommas = true });
        }
        catch (JsonException e) { throw new ModelFormatException(path, $"invalid JSON: {e.Message}"); }
        catch (IOException e) { throw new ModelFormatException(path, $"cannot read: {e.Message}"); }
    }

    private static JsonElement? Obj(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    private static string? Str(JsonElement e, string name) => Obj(e, name) is { ValueKind: JsonValueKind.String } v ? v.GetString() : null;

    private static bool? Bool(JsonElement e, string name) => Obj(e, name) is { } v && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : null;

    private static ModelFormatException Bad(string path, string problem) => new(path, problem);
}
