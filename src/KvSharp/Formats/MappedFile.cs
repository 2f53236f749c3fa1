using System.IO.MemoryMappedFiles;

namespace KvSharp.Formats;

/// <summary>
/// A read-only memory map of a whole file. Weights are read through it in place, so a model's
/// tensors cost address space, not managed heap, and the OS pages them in on demand.
/// </summary>
public sealed unsafe class MappedFile : IDisposable
{
    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private byte* _pointer;

    /// <summary>Maps <paramref name="path"/> read-only.</summary>
    public MappedFile(string path)
    {
        Path = path;
        if (!File.Exists(path)) throw new ModelFormatException(path, "file not found");
        Length = new FileInfo(path).Length;
        if (Length == 0) throw new ModelFormatException(path, "file is empty");
        _map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        _view = _map.CreateViewAccessor(0, Length, MemoryMappedFileAccess.Read);
        byte* p = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _pointer = p + _view.PointerOffset;
    }

    /// <summary>The mapped file's path.</summary>
    public string Path { get; }

    /// <summary>The file's length in bytes.</summary>
    public long Length { get; }

    /// <summary>Address of the file's first byte; valid until <see cref="Dispose"/>.</summary>
    public byte* Pointer => _pointer != null ? _pointer : throw new ObjectDisposedException(Path);

    /// <summary>A span over <paramref name="length"/> bytes at <paramref name="offset"/>, bounds-checked.</summary>
    public ReadOnlySpan<byte> Span(long offset, int length)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
            throw new ModelFormatException(Path, $"truncated: needs bytes {offset}..{offset + length} but the file has {Length}");
        return new ReadOnlySpan<byte>(Pointer + offset, length);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_pointer == null) return;
        _view!.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map!.Dispose();
        _pointer = null;
    }
}
