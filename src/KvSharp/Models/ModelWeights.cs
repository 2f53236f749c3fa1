using KvSharp.Formats;

namespace KvSharp.Models;

/// <summary>
/// A model's configuration and tensors under canonical names (<see cref="TensorNames"/>),
/// whatever file format or generator they came from. Disposing releases the mapping or memory.
/// </summary>
public sealed class ModelWeights : IDisposable
{
    private readonly Dictionary<string, TensorView> _tensors;
    private readonly IDisposable[] _owners;

    /// <summary>Wraps tensors (by canonical name) and the objects that keep their memory alive.</summary>
    public ModelWeights(ModelConfig config, string source, IReadOnlyDictionary<string, TensorView> tensors, params IDisposable[] owners)
    {
        Config = config;
        Source = source;
        _tensors = new Dictionary<string, TensorView>(tensors, StringComparer.Ordinal);
        _owners = owners;
    }

    /// <summary>The architecture.</summary>
    public ModelConfig Config { get; }

    /// <summary>Where the weights came from (a path, or "dummy:...").</summary>
    public string Source { get; }

    /// <summary>All tensors by canonical name.</summary>
    public IReadOnlyDictionary<string, TensorView> Tensors => _tensors;

    /// <summary>The tensor with canonical name <paramref name="name"/>, or null.</summary>
    public TensorView? Find(string name) => _tensors.GetValueOrDefault(name);

    /// <summary>The tensor with canonical name <paramref name="name"/>; a clear error when missing.</summary>
    public TensorView Require(string name) =>
        Find(name) ?? throw new ModelFormatException(Source, $"missing tensor '{name}'");

    /// <summary>Number of parameters (elements of all tensors; a tied output counts once).</summary>
    public long ParameterCount => _tensors.Values.Sum(t => t.ElementCount);

    /// <summary>Bytes the weights occupy in their stored precision.</summary>
    public long ByteCount => _tensors.Values.Sum(t => t.ByteLength);

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var o in _owners) o.Dispose();
    }
}
