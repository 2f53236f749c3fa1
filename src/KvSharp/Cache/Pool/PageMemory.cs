using System.Runtime.InteropServices;

namespace KvSharp.Cache.Pool;

/// <summary>
/// Page-granular memory straight from the OS. The KV pool allocates its slabs here rather than
/// from the C heap because malloc keeps freed chunks (its mmap threshold grows after every free of
/// a large chunk), so "evicted blocks free their memory" would not show in the process's resident
/// size. mmap/munmap on Unix, VirtualAlloc/VirtualFree on Windows.
/// </summary>
internal static unsafe partial class PageMemory
{
    private const int ProtRead = 1, ProtWrite = 2, MapPrivate = 2, MapAnonymous = 0x20;
    private const uint MemCommit = 0x1000, MemReserve = 0x2000, MemRelease = 0x8000, PageReadWrite = 4;

    /// <summary>Allocates <paramref name="bytes"/> of zeroed, page-aligned memory.</summary>
    public static byte* Allocate(nuint bytes)
    {
        if (OperatingSystem.IsWindows())
        {
            var p = VirtualAlloc(null, bytes, MemCommit | MemReserve, PageReadWrite);
            if (p == null) throw new OutOfMemoryException($"VirtualAlloc of {bytes} bytes failed");
            return (byte*)p;
        }
        if (OperatingSystem.IsLinux())
        {
            var p = mmap(null, bytes, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
            if (p == (void*)-1) throw new OutOfMemoryException($"mmap of {bytes} bytes failed");
            return (byte*)p;
        }
        return (byte*)NativeMemory.AlignedAlloc(bytes, 4096);
    }

    /// <summary>Returns memory from <see cref="Allocate"/> to the OS.</summary>
    public static void Free(byte* p, nuint bytes)
    {
        if (OperatingSystem.IsWindows()) VirtualFree(p, 0, MemRelease);
        else if (OperatingSystem.IsLinux()) munmap(p, bytes);
        else NativeMemory.AlignedFree(p);
    }

    /// <summary>
    /// Hands the pages of [<paramref name="p"/>, +<paramref name="bytes"/>) (page-aligned, inside one allocation) back
    /// to the OS while keeping the mapping: on Linux madvise(MADV_DONTNEED), after which they read as zeros and count
    /// in the resident size again only once written. Elsewhere a no-op (the memory stays resident until its slab is freed).
    /// </summary>
    public static void Discard(byte* p, nuint bytes)
    {
        if (OperatingSystem.IsLinux()) madvise(p, bytes, MadviseDontNeed);
    }

    private const int MadviseDontNeed = 4;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int madvise(void* addr, nuint length, int advice);

    [LibraryImport("libc", SetLastError = true)]
    private static partial void* mmap(void* addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(void* addr, nuint length);

    [LibraryImport("kernel32", SetLastError = true)]
    private static partial void* VirtualAlloc(void* addr, nuint size, uint type, uint protect);

    [LibraryImport("kernel32", SetLastError = true)]
    [return: MarshalAs(UnmanagedType.Bool)]
    private static partial bool VirtualFree(void* addr, nuint size, uint type);
}
