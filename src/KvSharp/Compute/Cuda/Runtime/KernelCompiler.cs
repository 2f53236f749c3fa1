using System.Security.Cryptography;
using System.Text;
using KvSharp.Compute.Cuda.Native;

namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>
/// Compiles the embedded CUDA C++ kernel sources with NVRTC for the device's own architecture and keeps
/// each cubin on disk, keyed by a hash of the sources, the options, the architecture and NVRTC's
/// version, so only the first run on a machine pays for compilation.
/// </summary>
internal static unsafe class KernelCompiler
{
    private const string ResourcePrefix = "KvSharp.Cuda.";

    /// <summary>Folder of cached cubins: $KVSHARP_CUDA_CACHE, else ~/.cache/kvsharp/cuda.</summary>
    public static string CacheDirectory
    {
        get
        {
            var env = Environment.GetEnvironmentVariable("KVSHARP_CUDA_CACHE");
            if (!string.IsNullOrEmpty(env)) return env;
            return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "kvsharp", "cuda");
        }
    }

    /// <summary>
    /// The cubin of embedded source <paramref name="fileName"/> (with every embedded .cuh header available to it), built
    /// with the preprocessor <paramref name="defines"/> (NAME or NAME=VALUE; part of the cache key): a file may build
    /// specialized variants of its kernels (paged_attention_tc.cu's PIPE_ONLY builds).
    /// </summary>
    public static byte[] CompileEmbedded(string fileName, string architecture, IReadOnlyList<string>? defines = null)
    {
        string source = ReadResource(fileName);
        var headers = EmbeddedHeaders();
        string[] options = [.. Options(architecture), .. (defines ?? []).Select(d => "-D" + d)];
        string key = CacheKey(fileName, source, headers, options);
        string path = Path.Combine(CacheDirectory, $"{Path.GetFileNameWithoutExtension(fileName)}-{architecture}-{key}.cubin");
        if (File.Exists(path)) return File.ReadAllBytes(path);
        byte[] cubin = CompileSplit(fileName, source, headers, options);
        try
        {
            Directory.CreateDirectory(CacheDirectory);
            string temp = path + $".{Environment.ProcessId}.tmp";
            File.WriteAllBytes(temp, cubin);
            File.Move(temp, path, overwrite: true);
        }
        catch (IOException) { } // a read-only or full disk only costs a recompilation next time
        catch (UnauthorizedAccessException) { }
        return cubin;
    }

    /// <summary>
    /// NVRTC's options for <paramref name="architecture"/>, and from the environment: <c>$KVSHARP_NVRTC_LINEINFO=1</c> adds
    /// <c>-lineinfo</c> (source lines in the cubin, for Nsight Compute's source-level stall sampling; no effect on the code).
    /// Part of the cache key.
    /// </summary>
    private static IEnumerable<string> Options(string architecture)
    {
        yield return $"--gpu-architecture={architecture}";
        yield return "--std=c++17";
        yield return "-default-device";
        if (Environment.GetEnvironmentVariable("KVSHARP_NVRTC_LINEINFO") == "1") yield return "-lineinfo";
    }

    /// <summary>
    /// <see cref="Compile"/> with NVRTC's split compilation (its optimization passes on every core, NVRTC 12.1 and later)
    /// where the library takes the option; the cache key leaves it out, as it parallelizes the compiler's work rather than
    /// changing the program. An NVRTC that rejects the option compiles plainly.
    /// </summary>
    private static byte[] CompileSplit(string name, string source, IReadOnlyList<(string Name, string Text)> headers, string[] options)
    {
        NvrtcApi.Check(NvrtcApi.nvrtcVersion(out int major, out int minor), "nvrtcVersion");
        if (major < 12 || (major == 12 && minor < 1) || _splitRejected) return Compile(name, source, headers, options);
        try
        {
            return Compile(name, source, headers, [.. options, "--split-compile=0"]);
        }
        catch (CudaException e) when (e.Message.Contains("NVRTC_ERROR_INVALID_OPTION", StringComparison.Ordinal))
        {
            _splitRejected = true;
            return Compile(name, source, headers, options);
        }
    }

    private static volatile bool _splitRejected;

    /// <summary>
    /// The cubin of kernel source text <paramref name="source"/> (not cached) with every embedded .cuh header available to
    /// it: benchmarks time a baseline revision's kernel file against the embedded one.
    /// </summary>
    public static byte[] CompileSource(string name, string source, string architecture) =>
        CompileSplit(name, source, EmbeddedHeaders(), [.. Options(architecture)]);

    private static byte[] Compile(string name, string source, IReadOnlyList<(string Name, string Text)> headers, string[] options)
    {
        var pinned = new List<IntPtr>();
        byte* Utf8(string s)
        {
            var bytes = Encoding.UTF8.GetBytes(s + "\0");
            var p = (byte*)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)bytes.Length);
            bytes.CopyTo(new Span<byte>(p, bytes.Length));
            pinned.Add((IntPtr)p);
            return p;
        }
        IntPtr program = IntPtr.Zero;
        try
        {
            byte** headerTexts = stackalloc byte*[Math.Max(1, headers.Count)];
            byte** headerNames = stackalloc byte*[Math.Max(1, headers.Count)];
            for (int i = 0; i < headers.Count; i++) { headerTexts[i] = Utf8(headers[i].Text); headerNames[i] = Utf8(headers[i].Name); }
            NvrtcApi.Check(NvrtcApi.nvrtcCreateProgram(out program, Utf8(source), Utf8(name), headers.Count, headerTexts, headerNames), "nvrtcCreateProgram");
            byte** opts = stackalloc byte*[options.Length];
            for (int i = 0; i < options.Length; i++) opts[i] = Utf8(options[i]);
            int result = NvrtcApi.nvrtcCompileProgram(program, options.Length, opts);
            if (result != 0)
            {
                string code = System.Runtime.InteropServices.Marshal.PtrToStringUTF8((IntPtr)NvrtcApi.nvrtcGetErrorString(result)) ?? $"NVRTC error {result}";
                throw new CudaException($"nvrtcCompileProgram({name})", $"{code}, compilation failed:\n{Log(program)}");
            }
            NvrtcApi.Check(NvrtcApi.nvrtcGetCUBINSize(program, out nuint size), "nvrtcGetCUBINSize");
            var cubin = new byte[size];
            fixed (byte* c = cubin) NvrtcApi.Check(NvrtcApi.nvrtcGetCUBIN(program, c), "nvrtcGetCUBIN");
            return cubin;
        }
        finally
        {
            if (program != IntPtr.Zero) NvrtcApi.nvrtcDestroyProgram(ref program);
            foreach (var p in pinned) System.Runtime.InteropServices.NativeMemory.Free((void*)p);
        }
    }

    private static string Log(IntPtr program)
    {
        if (NvrtcApi.nvrtcGetProgramLogSize(program, out nuint size) != 0 || size <= 1) return "(no log)";
        var log = new byte[size];
        fixed (byte* l = log) NvrtcApi.nvrtcGetProgramLog(program, l);
        return Encoding.UTF8.GetString(log, 0, (int)size - 1);
    }

    private static string CacheKey(string name, string source, IReadOnlyList<(string Name, string Text)> headers, string[] options)
    {
        NvrtcApi.Check(NvrtcApi.nvrtcVersion(out int major, out int minor), "nvrtcVersion");
        var text = new StringBuilder().Append(name).Append('\0').Append(source).Append('\0').Append(major).Append('.').Append(minor);
        foreach (var o in options) text.Append('\0').Append(o);
        foreach (var (n, t) in headers) text.Append('\0').Append(n).Append('\0').Append(t);
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())))[..16];
    }

    private static List<(string Name, string Text)> EmbeddedHeaders() =>
        typeof(KernelCompiler).Assembly.GetManifestResourceNames()
            .Where(n => n.StartsWith(ResourcePrefix, StringComparison.Ordinal) && n.EndsWith(".cuh", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal)
            .Select(n => (n[ResourcePrefix.Length..], ReadResource(n[ResourcePrefix.Length..])))
            .ToList();

    private static string ReadResource(string fileName)
    {
        using var stream = typeof(KernelCompiler).Assembly.GetManifestResourceStream(ResourcePrefix + fileName)
            ?? throw new InvalidOperationException($"kernel source '{fileName}' is not embedded in the assembly");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }
}
