using KvSharp.Formats;

namespace KvSharp.Models.Loading;

/// <summary>Checks that a model's tensors are all present with the shapes its configuration implies.</summary>
public static class WeightValidator
{
    /// <summary>The canonical names and shapes (outermost first) <paramref name="c"/> requires; output.weight only when untied.</summary>
    public static IEnumerable<(string Name, long[] Shape)> Expected(ModelConfig c)
    {
        long q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKvHeads * c.HeadDim;
        yield return (TensorNames.TokenEmbedding, [c.VocabSize, c.HiddenSize]);
        yield return (TensorNames.OutputNorm, [c.HiddenSize]);
        if (!c.TieEmbeddings) yield return (TensorNames.Output, [c.VocabSize, c.HiddenSize]);
        for (int l = 0; l < c.NumLayers; l++)
        {
            string L(string s) => TensorNames.Layer(l, s);
            yield return (L(TensorNames.Suffix.AttnNorm), [c.HiddenSize]);
            yield return (L(TensorNames.Suffix.Q), [q, c.HiddenSize]);
            yield return (L(TensorNames.Suffix.K), [kv, c.HiddenSize]);
            yield return (L(TensorNames.Suffix.V), [kv, c.HiddenSize]);
            if (c.AttentionBias)
            {
                yield return (L(TensorNames.Suffix.QBias), [q]);
                yield return (L(TensorNames.Suffix.KBias), [kv]);
                yield return (L(TensorNames.Suffix.VBias), [kv]);
            }
            if (c.QkNorm)
            {
                yield return (L(TensorNames.Suffix.QNorm), [c.HeadDim]);
                yield return (L(TensorNames.Suffix.KNorm), [c.HeadDim]);
            }
            yield return (L(TensorNames.Suffix.AttnOutput), [c.HiddenSize, q]);
            yield return (L(TensorNames.Suffix.FfnNorm), [c.HiddenSize]);
            yield return (L(TensorNames.Suffix.FfnGate), [c.IntermediateSize, c.HiddenSize]);
            yield return (L(TensorNames.Suffix.FfnUp), [c.IntermediateSize, c.HiddenSize]);
            yield return (L(TensorNames.Suffix.FfnDown), [c.HiddenSize, c.IntermediateSize]);
        }
    }

    /// <summary>
    /// Throws a <see cref="ModelFormatException"/> naming <paramref name="source"/>, the tensor
    /// (canonical and, when different, stored name), the expected and the actual shape.
    /// </summary>
    public static void Validate(ModelConfig config, IReadOnlyDictionary<string, TensorView> tensors, string source)
    {
        foreach (var (name, shape) in Expected(config))
        {
            if (!tensors.TryGetValue(name, out var t))
                throw new ModelFormatException(source, $"missing tensor '{name}' (expected shape [{string.Join(", ", shape)}])");
            if (!t.Shape.SequenceEqual(shape))
            {
                string stored = t.Name == name ? "" : $" (stored as '{t.Name}')";
                throw new ModelFormatException(source, $"tensor '{name}'{stored} has shape [{string.Join(", ", t.Shape)}], expected [{string.Join(", ", shape)}]");
            }
        }
        if (config.TieEmbeddings && tensors.TryGetValue(TensorNames.Output, out var o) && !o.Shape.SequenceEqual(new long[] { config.VocabSize, config.HiddenSize }))
            throw new ModelFormatException(source, $"tensor '{TensorNames.Output}' has shape [{string.Join(", ", o.Shape)}], expected [{config.VocabSize}, {config.HiddenSize}]");
    }
}
