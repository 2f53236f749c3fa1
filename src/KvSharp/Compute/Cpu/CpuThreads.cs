namespace KvSharp.Compute.Cpu;

/// <summary>
/// The persistent worker pool the CPU kernels split work across: one thread per core, the caller
/// being one of them. Workers spin briefly after each job (decode issues hundreds of small matvecs
/// per token, and waking a blocked thread costs tens of microseconds) and then block.
/// </summary>
public static unsafe class CpuThreads
{
    private static WorkerPool? _pool;
    private static int _count = Environment.ProcessorCount;
    private static readonly object Gate = new();

    /// <summary>
    /// Degree of parallelism of the kernels (default <see cref="Environment.ProcessorCount"/>).
    /// Setting it replaces the pool; 1 runs everything on the calling thread.
    /// </summary>
    public static int Count
    {
        get => _count;
        set
        {
            if (value < 1) throw new ArgumentOutOfRangeException(nameof(value), $"thread count {value} must be at least 1");
            lock (Gate)
            {
                if (value == _count) return;
                _pool?.Dispose();
                _pool = null;
                _count = value;
            }
        }
    }

    private static WorkerPool? Pool
    {
        get
        {
            if (_count <= 1) return null;
            var p = Volatile.Read(ref _pool);
            if (p != null) return p;
            lock (Gate)
            {
                return _pool ??= new WorkerPool(_count);
            }
        }
    }

    /// <summary>
    /// Runs <paramref name="body"/>(ctx, chunk) for every chunk in [0, chunks), spread over the pool;
    /// returns when all are done. Nested or concurrent calls run inline on the caller.
    /// </summary>
    internal static void Run(int chunks, delegate*<void*, int, void> body, void* ctx)
    {
        if (chunks <= 0) return;
        var pool = chunks > 1 ? Pool : null;
        if (pool == null || !pool.TryRun(chunks, body, ctx))
            for (int i = 0; i < chunks; i++) body(ctx, i);
    }

    /// <summary>
    /// Calls <paramref name="body"/>(start, end) over contiguous ranges covering [0, count), in
    /// parallel on the kernel pool, with ranges of at least <paramref name="grain"/> items.
    /// </summary>
    public static void For(int count, int grain, Action<int, int> body)
    {
        ArgumentNullException.ThrowIfNull(body);
        if (count <= 0) return;
        grain = Math.Max(1, grain);
        int chunks = Math.Min(Math.Max(1, count / grain), _count * 4);
        if (chunks <= 1) { body(0, count); return; }
        var state = new ForState(count, chunks, body);
        var handle = System.Runtime.InteropServices.GCHandle.Alloc(state);
        try
        {
            Run(chunks, &ForChunk, (void*)System.Runtime.InteropServices.GCHandle.ToIntPtr(handle));
        }
        finally
        {
            handle.Free();
        }
    }

    private sealed record ForState(int Count, int Chunks, Action<int, int> Body);

    private static void ForChunk(void* ctx, int chunk)
    {
        var s = (ForState)System.Runtime.InteropServices.GCHandle.FromIntPtr((IntPtr)ctx).Target!;
        long start = (long)s.Count * chunk / s.Chunks, end = (long)s.Count * (chunk + 1) / s.Chunks;
        s.Body((int)start, (int)end);
    }

    /// <summary>How long an idle worker spins before it blocks (default 500 µs).</summary>
    public static int SpinMicroseconds
    {
        get => (int)(SpinTicks * 1_000_000 / System.Diagnostics.Stopwatch.Frequency);
        set => SpinTicks = Math.Max(0, (long)value) * System.Diagnostics.Stopwatch.Frequency / 1_000_000;
    }

    private static long SpinTicks = 500 * System.Diagnostics.Stopwatch.Frequency / 1_000_000;

    private sealed class WorkerPool : IDisposable
    {
        private readonly Thread[] _threads;
        private readonly object _sleepLock = new();
        private int _busy;
        private int _generation;
        private int _sleepers;
        private volatile bool _disposed;
        // The current job; written before _generation is bumped and read after seeing the bump.
        private delegate*<void*, int, void> _body;
        private void* _ctx;
        private int _chunks;
        private int _next;
        private int _done;
        private Exception? _error;

        public WorkerPool(int threads)
        {
            _threads = new Thread[threads - 1];
            for (int i = 0; i < _threads.Length; i++)
            {
                _threads[i] = new Thread(Worker) { IsBackground = true, Name = $"KvSharp kernel worker {i + 1}" };
                _threads[i].Start();
            }
        }

        public bool TryRun(int chunks, delegate*<void*, int, void> body, void* ctx)
        {
            if (Interlocked.CompareExchange(ref _busy, 1, 0) != 0) return false;
            try
            {
                // Order matters: a late worker from the previous job may still be incrementing _next,
                // so everything it reads after a successful claim must already describe this job.
                _done = 0; _error = null; _body = body; _ctx = ctx;
                Volatile.Write(ref _chunks, chunks);
                Volatile.Write(ref _next, 0);
                Interlocked.Increment(ref _generation);
                if (Volatile.Read(ref _sleepers) > 0)
                    lock (_sleepLock) Monitor.PulseAll(_sleepLock);
                Work();
                var spin = new SpinWait();
                while (Volatile.Read(ref _done) < chunks) spin.SpinOnce(-1);
                if (_error != null) throw new AggregateException("a kernel worker failed", _error);
                return true;
            }
            finally
            {
                Volatile.Write(ref _busy, 0);
            }
        }

        private void Work()
        {
            while (true)
            {
                int i = Interlocked.Increment(ref _next) - 1;
                if (i >= Volatile.Read(ref _chunks)) return;
                try { _body(_ctx, i); }
                catch (Exception e) { _error = e; }
                Interlocked.Increment(ref _done);
            }
        }

        private void Worker()
        {
            int seen = Volatile.Read(ref _generation);
            while (!_disposed)
            {
                // Spin up to SpinMicroseconds for the next job before blocking: the gaps between a decode
                // step's matmuls (norms, attention) are usually shorter than a wake-up from a blocked wait.
                long deadline = System.Diagnostics.Stopwatch.GetTimestamp() + SpinTicks;
                while (Volatile.Read(ref _generation) == seen && !_disposed)
                {
                    Thread.SpinWait(4);
                    if (System.Diagnostics.Stopwatch.GetTimestamp() > deadline) break;
                }
                if (Volatile.Read(ref _generation) == seen)
                {
                    lock (_sleepLock)
                    {
                        Interlocked.Increment(ref _sleepers);
                        while (Volatile.Read(ref _generation) == seen && !_disposed) Monitor.Wait(_sleepLock);
                        Interlocked.Decrement(ref _sleepers);
                    }
                }
                if (_disposed) return;
                seen = Volatile.Read(ref _generation);
                // A job is in flight until every chunk is done, so its fields are stable here.
                if (Volatile.Read(ref _next) < _chunks) Work();
            }
        }

        public void Dispose()
        {
            _disposed = true;
            lock (_sleepLock) Monitor.PulseAll(_sleepLock);
        }
    }
}
