using KvSharp.Compute.Cuda.Native;

namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>Times work on the device's stream with a pair of CUDA events (host clocks would time the launch, not the work).</summary>
internal sealed class CudaTimer : IDisposable
{
    private readonly CudaDevice _device;
    private readonly IntPtr _start, _end;

    public CudaTimer(CudaDevice device)
    {
        _device = device;
        device.MakeCurrent();
        CudaApi.Check(CudaApi.cuEventCreate(out _start, CudaApi.EventDefault), "cuEventCreate");
        CudaApi.Check(CudaApi.cuEventCreate(out _end, CudaApi.EventDefault), "cuEventCreate");
    }

    public void Start() => CudaApi.Check(CudaApi.cuEventRecord(_start, _device.Stream), "cuEventRecord");

    /// <summary>Records the end event, waits for it and returns the milliseconds since <see cref="Start"/>.</summary>
    public float StopMilliseconds()
    {
        CudaApi.Check(CudaApi.cuEventRecord(_end, _device.Stream), "cuEventRecord");
        CudaApi.Check(CudaApi.cuEventSynchronize(_end), "cuEventSynchronize");
        CudaApi.Check(CudaApi.cuEventElapsedTime(out float ms, _start, _end), "cuEventElapsedTime");
        return ms;
    }

    public void Dispose()
    {
        CudaApi.cuEventDestroy(_start);
        CudaApi.cuEventDestroy(_end);
    }
}
