using System.Buffers.Binary;
using System.IO.Hashing;
using System.Text;

namespace KvSharp.Cache.Paged;

/// <summary>
/// The container of a saved <see cref="PagedKvCache"/>: a fixed header, the payload and an XXH64 checksum of the
/// payload (docs/kv-cache.md has the full layout). This class owns the container (header checks, checksum, atomic
/// write); <see cref="PagedKvCache"/> writes and reads the payload's fields.
/// </summary>
/// <remarks>
/// Header, 24 bytes, little-endian: magic "KVSCACHE", u32 version, u32 flags (0), u64 payload length. Then the
/// payload, then u64 XXH64 (seed 0) of the payload bytes. Every header byte is checked on load (magic, version, flags,
/// and the length against the file's size), the payload by its checksum before any of it is parsed.
/// </remarks>
internal static class PagedKvCacheFile
{
    /// <summary>The file's first 8 bytes.</summary>
    public static ReadOnlySpan<byte> Magic => "KVSCACHE"u8;

    /// <summary>
    /// The payload layout this build writes and reads. Version 2 stores each block's positions with the block (blocks
    /// hold same-format tokens in any position order); version 1 (one ascending position list per head, blocks in
    /// position order) is refused with a message saying to save the cache again.
    /// </summary>
    public const uint Version = 2;

    private const int HeaderBytes = 24, ChecksumBytes = 8;

    /// <summary>
    /// Writes a file atomically: <paramref name="writePayload"/> writes the payload into a temporary file in the same
    /// folder, which replaces <paramref name="path"/> only once it is complete and flushed to disk. If anything fails
    /// the temporary file is deleted and <paramref name="path"/> is untouched.
    /// </summary>
    /// <exception cref="KvSharpException">The file cannot be written (the message names it).</exception>
    public static void WriteAtomically(string path, Action<Stream> writePayload)
    {
        string full = Path.GetFullPath(path);
        string tmp = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                fs.Write(new byte[HeaderBytes]); // filled in once the payload's length is known
                var hashing = new HashingWriteStream(fs);
                var buffered = new BufferedStream(hashing, 1 << 16); // the payload is written field by field
                writePayload(buffered);
                buffered.Flush();
                Span<byte> checksum = stackalloc byte[ChecksumBytes];
                BinaryPrimitives.WriteUInt64LittleEndian(checksum, hashing.Hash.GetCurrentHashAsUInt64());
                fs.Write(checksum);
                Span<byte> header = stackalloc byte[HeaderBytes];
                Magic.CopyTo(header);
                BinaryPrimitives.WriteUInt32LittleEndian(header[8..], Version);
                BinaryPrimitives.WriteUInt32LittleEndian(header[12..], 0);
                BinaryPrimitives.WriteInt64LittleEndian(header[16..], hashing.Length);
                fs.Position = 0;
                fs.Write(header);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch (Exception e)
        {
            try { File.Delete(tmp); } catch (IOException) { }
            if (e is IOException or UnauthorizedAccessException)
                throw new KvSharpException($"{path}: cannot write KV cache file ({e.Message})", e);
            throw;
        }
    }

    /// <summary>
    /// Opens a saved cache for reading its payload: checks the header and the file's length, then the payload's
    /// checksum (one pass over the file), and returns a stream positioned at the payload's first byte.
    /// </summary>
    /// <exception cref="KvSharpException">The file is missing, not a cache file, of another version, truncated or corrupt; the message names the file and the problem.</exception>
    public static Stream OpenPayload(string path)
    {
        FileStream fs;
        try { fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new KvSharpException($"{path}: cannot read KV cache file ({e.Message})", e);
        }
        try
        {
            Span<byte> header = stackalloc byte[HeaderBytes];
            int got = fs.ReadAtLeast(header, HeaderBytes, throwOnEndOfStream: false);
            if (got >= Magic.Length && !header[..Magic.Length].SequenceEqual(Magic))
                throw new KvSharpException($"{path}: not a KvSharp KV cache file (it starts with '{Printable(header[..Magic.Length])}', expected 'KVSCACHE')");
            if (got < HeaderBytes)
                throw new KvSharpException($"{path}: truncated KV cache file ({fs.Length} bytes, shorter than its {HeaderBytes}-byte header)");
            uint version = BinaryPrimitives.ReadUInt32LittleEndian(header[8..]);
            if (version == 1)
                throw new KvSharpException($"{path}: KV cache file version 1 was written by an older KvSharp (blocks in position order); this build reads version {Version} (blocks with their own positions): prefill and save the cache again");
            if (version != Version)
                throw new KvSharpException($"{path}: unsupported KV cache file version {version} (this build reads version {Version})");
            uint flags = BinaryPrimitives.ReadUInt32LittleEndian(header[12..]);
            if (flags != 0)
                throw new KvSharpException($"{path}: unsupported KV cache file flags 0x{flags:X8} (version {Version} writes 0)");
            long payload = BinaryPrimitives.ReadInt64LittleEndian(header[16..]);
            long expected = HeaderBytes + payload + ChecksumBytes;
            if (payload < 0 || fs.Length < expected)
                throw new KvSharpException($"{path}: truncated KV cache file ({fs.Length} bytes, its header announces {expected})");
            if (fs.Length > expected)
                throw new KvSharpException($"{path}: KV cache file has {fs.Length - expected} bytes after its end (its header announces {expected} bytes)");

            var hash = new XxHash64();
            var buffer = new byte[1 << 20];
            for (long left = payload; left > 0;)
            {
                int n = fs.Read(buffer, 0, (int)Math.Min(buffer.Length, left));
                if (n <= 0) throw new KvSharpException($"{path}: truncated KV cache file (ended while reading its payload)");
                hash.Append(buffer.AsSpan(0, n));
                left -= n;
            }
            Span<byte> stored = stackalloc byte[ChecksumBytes];
            fs.ReadExactly(stored);
            ulong actual = hash.GetCurrentHashAsUInt64(), want = BinaryPrimitives.ReadUInt64LittleEndian(stored);
            if (actual != want)
                throw new KvSharpException($"{path}: KV cache file is corrupt (payload checksum {actual:x16}, the file records {want:x16})");
            fs.Position = HeaderBytes;
            return new BoundedReadStream(fs, payload);
        }
        catch
        {
            fs.Dispose();
            throw;
        }
    }

    private static string Printable(ReadOnlySpan<byte> bytes)
    {
        var sb = new StringBuilder();
        foreach (byte b in bytes) sb.Append(b is >= 0x20 and < 0x7F ? (char)b : '?');
        return sb.ToString();
    }

    /// <summary>Writes through to a stream, hashing and counting every byte.</summary>
    private sealed class HashingWriteStream(Stream inner) : Stream
    {
        public XxHash64 Hash { get; } = new();
        public override long Length => _length;
        private long _length;

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            Hash.Append(buffer);
            inner.Write(buffer);
            _length += buffer.Length;
        }

        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
        public override void WriteByte(byte value) => Write([value]);
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Position { get => _length; set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
    }

    /// <summary>Reads at most the payload's bytes of a file (so a malformed count cannot read the checksum as data); owns the file.</summary>
    private sealed class BoundedReadStream(Stream inner, long length) : Stream
    {
        private readonly long _length = length;
        private long _left = length;

        public override int Read(Span<byte> buffer)
        {
            int n = inner.Read(buffer[..(int)Math.Min(buffer.Length, _left)]);
            _left -= n;
            return n;
        }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => _length;
        public override long Position { get => _length - _left; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing) inner.Dispose();
            base.Dispose(disposing);
        }
    }
}
