using KvSharp.Compute.Cuda.Native;

namespace KvSharp.Compute.Cuda.Runtime;

/// <summary>
/// A captured sequence of launches on the device's stream, replayed with one call: a decode step's
/// hundreds of small kernels then cost one launch instead of one each.
/// </summary>
internal sealed class CudaGraph : IDisposable
{
    private readonly CudaDevice _device;
    private readonly IntPtr _graph, _exec;

    private CudaGraph(CudaDevice device, IntPtr graph, IntPtr exec) { _device = device; _graph = graph; _exec = exec; }

    /// <summary>Records what <paramref name="enqueue"/> queues on the device's stream (it must not synchronize).</summary>
    public static CudaGraph Capture(CudaDevice device, Action enqueue)
    {
        device.MakeCurrent();
        CudaApi.Check(CudaApi.cuStreamBeginCapture(device.Stream, CudaApi.StreamCaptureModeThreadLocal), "cuStreamBeginCapture_v2");
        try
        {
            enqueue();
        }
        catch
        {
            CudaApi.cuStreamEndCapture(device.Stream, out var broken);
            if (broken != IntPtr.Zero) CudaApi.cuGraphDestroy(broken);
            throw;
        }
        CudaApi.Check(CudaApi.cuStreamEndCapture(device.Stream, out var graph), "cuStreamEndCapture");
        int r = CudaApi.cuGraphInstantiateWithFlags(out var exec, graph, 0);
        if (r != 0) { CudaApi.cuGraphDestroy(graph); CudaApi.Check(r, "cuGraphInstantiateWithFlags"); }
        return new CudaGraph(device, graph, exec);
    }

    /// <summary>Queues one replay.</summary>
    public void Launch() => CudaApi.Check(CudaApi.cuGraphLaunch(_exec, _device.Stream), "cuGraphLaunch");

    public void Dispose()
    {
        _device.MakeCurrent();
        CudaApi.cuGraphExecDestroy(_exec);
        CudaApi.cuGraphDestroy(_graph);
    }
}
