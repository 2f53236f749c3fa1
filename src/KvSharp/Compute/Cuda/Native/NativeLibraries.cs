using System.Reflection;
using System.Runtime.InteropServices;

namespace KvSharp.Compute.Cuda.Native;

/// <summary>
/// Resolves the logical library names used by the CUDA bindings ("cuda", "nvrtc", "cublas") to the
/// versioned shared objects a machine actually has. Distributions ship only versioned names
/// (libnvrtc.so.13, libcublas.so.13) unless the -dev packages are installed, and the toolkit's
/// lib64 folder is often not on the loader's search path, so both are tried.
/// </summary>
internal static class NativeLibraries
{
    public const string Driver = "cuda";
    public const string Nvrtc = "nvrtc";
    public const string Cublas = "cublas";

    private static readonly Lock Gate = new();
    private static bool _registered;

    /// <summary>Installs the resolver once for this assembly (a second registration would throw).</summary>
    public static void Register()
    {
        lock (Gate)
        {
            if (_registered) return;
            NativeLibrary.SetDllImportResolver(typeof(NativeLibraries).Assembly, Resolve);
            _registered = true;
        }
    }

    private static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        string[]? candidates = name switch
        {
            Driver => ["libcuda.so.1", "libcuda.so"],
            Nvrtc => Versioned("libnvrtc.so"),
            Cublas => Versioned("libcublas.so"),
            _ => null,
        };
        if (candidates == null) return IntPtr.Zero;
        foreach (var file in candidates)
        {
            if (NativeLibrary.TryLoad(file, out var handle)) return handle;
            foreach (var dir in SearchDirectories())
            {
                string path = Path.Combine(dir, file);
                if (File.Exists(path) && NativeLibrary.TryLoad(path, out handle)) return handle;
            }
        }
        return IntPtr.Zero; // the runtime then throws DllNotFoundException, which CudaDevice turns into "CUDA unavailable"
    }

    /// <summary>Newest major versions first, then the unversioned development link.</summary>
    private static string[] Versioned(string stem) =>
        [$"{stem}.13", $"{stem}.12", $"{stem}.14", $"{stem}.11", stem];

    private static IEnumerable<string> SearchDirectories()
    {
        foreach (var variable in new[] { "KVSHARP_CUDA_LIB_DIR", "CUDA_HOME", "CUDA_PATH" })
        {
            var value = Environment.GetEnvironmentVariable(variable);
            if (string.IsNullOrEmpty(value)) continue;
            yield return value;
            yield return Path.Combine(value, "lib64");
            yield return Path.Combine(value, "targets", "x86_64-linux", "lib");
        }
        yield return "/usr/local/cuda/lib64";
        yield return "/usr/local/cuda/targets/x86_64-linux/lib";
        yield return "/usr/lib/x86_64-linux-gnu";
    }
}
