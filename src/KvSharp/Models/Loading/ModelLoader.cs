using KvSharp.Formats;
using KvSharp.Formats.Gguf;
using KvSharp.Formats.SafeTensors;

namespace KvSharp.Models.Loading;

/// <summary>
/// Opens a model from disk, whatever its format, as <see cref="ModelWeights"/> under canonical
/// tensor names. Weights stay memory-mapped; dispose the result to unmap them.
/// </summary>
public static class ModelLoader
{
    /// <summary>
    /// Loads <paramref name="path"/>: a <c>.gguf</c> file; a Hugging Face directory with
    /// <c>config.json</c> and <c>model.safetensors</c> or <c>model.safetensors.index.json</c>; or a
    /// <c>.safetensors</c> file / index with <c>config.json</c> beside it. When the model is a GGUF,
    /// <paramref name="readGguf"/> (if given) reads whatever else it needs from the same parsed file
    /// (the tokenizer, the chat template) so callers don't open and parse it a second time.
    /// </summary>
    public static ModelWeights Load(string path, Action<GgufFile>? readGguf = null)
    {
        if (Directory.Exists(path))
        {
            if (File.Exists(Path.Combine(path, HfConfigReader.FileName))) return LoadHuggingFace(path, path);
            var ggufs = Directory.GetFiles(path, "*.gguf");
            if (ggufs.Length == 1) return LoadGguf(ggufs[0], readGguf);
            throw new ModelFormatException(path, $"no {HfConfigReader.FileName} in this directory (expected a Hugging Face model directory or a single .gguf file)");
        }
        if (!File.Exists(path)) throw new ModelFormatException(path, "no such file or directory");
        if (GgufFile.LooksLikeGguf(path)) return LoadGguf(path, readGguf);
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
        {
            string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
            if (Path.GetFileName(path) == HfConfigReader.FileName) return LoadHuggingFace(dir, dir);
            if (!File.Exists(Path.Combine(dir, HfConfigReader.FileName)))
                throw new ModelFormatException(path, $"no {HfConfigReader.FileName} beside this safetensors file; it is needed to know the architecture");
            return LoadHuggingFace(dir, path);
        }
        if (path.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase))
            throw new ModelFormatException(path, "not a GGUF file (bad magic)");
        throw new ModelFormatException(path, "not a model: expected a .gguf file, a .safetensors file, or a Hugging Face model directory");
    }

    /// <summary>Loads a GGUF file; its tensor names are already canonical. See <see cref="Load"/> for <paramref name="readGguf"/>.</summary>
    public static ModelWeights LoadGguf(string path, Action<GgufFile>? readGguf = null)
    {
        var gguf = GgufFile.Open(path);
        try
        {
            var config = GgufConfigReader.Read(gguf);
            var tensors = gguf.Tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
            WeightValidator.Validate(config, tensors, path);
            readGguf?.Invoke(gguf);
            return new ModelWeights(config, path, tensors, gguf);
        }
        catch
        {
            gguf.Dispose();
            throw;
        }
    }

    /// <summary>Loads a Hugging Face checkpoint: config from <paramref name="dir"/>, weights from <paramref name="weightsPath"/>.</summary>
    public static ModelWeights LoadHuggingFace(string dir, string weightsPath)
    {
        string configPath = Path.Combine(dir, HfConfigReader.FileName);
        var config = HfConfigReader.Read(configPath);
        var set = SafeTensorsSet.Open(weightsPath);
        try
        {
            var tensors = new Dictionary<string, TensorView>(StringComparer.Ordinal);
            foreach (var (name, view) in set.Tensors)
            {
                string? canonical = HfTensorNames.ToCanonical(name, out bool known);
                if (!known)
                    throw new ModelFormatException(FileOf(set, view), $"tensor '{name}' is not part of a supported {config.Architecture} decoder (unsupported feature?)");
                if (canonical == null) continue;
                tensors[canonical] = view;
            }
            // Tied checkpoints store one matrix under either name (tinystories-656k keeps only lm_head).
            // When both are stored they are kept: identical values, and output.weight simply wins.
            if (config.TieEmbeddings && !tensors.ContainsKey(TensorNames.TokenEmbedding) && tensors.Remove(TensorNames.Output, out var output))
                tensors[TensorNames.TokenEmbedding] = output; // the transformer falls back to token_embd for the output
            WeightValidator.Validate(config, tensors, set.Path);
            return new ModelWeights(config, set.Path, tensors, set);
        }
        catch
        {
            set.Dispose();
            throw;
        }
    }

    private static unsafe string FileOf(SafeTensorsSet set, TensorView view) =>
        set.Files.FirstOrDefault(f => f.FindTensor(view.Name) == view)?.Path ?? set.Path;
}
