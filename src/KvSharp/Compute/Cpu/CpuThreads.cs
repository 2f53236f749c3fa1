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
            RunInline(chunks, body, ctx);
    }

    // The same contract as the pool's: every chunk runs even when one throws, and the first exception is rethrown
    // afterwards (a caller that finds the pool busy with another thread's job must not leave chunks undone).
    private static void RunInline(int chunks, delegate*<void*, int, void> body, void* ctx)
    {
        Exception? error = null;
        for (int i = 0; i < chunks; i++)
        {
            try { body(ctx, i); }
            catch (Exception e) { error ??= e; }
        }
        if (error != null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(error);
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
        // The current job: body and context are written before the job is published through _claim, and read only after
        // a successful claim of one of its chunks (the job cannot end, so they cannot change, while a chunk is unfinished).
        private delegate*<void*, int, void> _body;
        private void* _ctx;
        // The job's chunk count (high 32 bits) and next unclaimed chunk (low 32 bits) in one word, so a claim checks the
        // bound and takes the chunk in one atomic step. With the two apart, a worker that took index i after the previous
        // job's last chunk and was preempted before reading the count could see the next job's larger count and run chunk
        // i of that job a second time; the duplicate let the caller count the job done while a chunk still ran, on a Job
        // that lived on the caller's returned stack frame (garbage pointers and SIMD level: the crash seen on a 16-core host).
        private long _claim;
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
                // The previous job's claim word is exhausted (every chunk taken), so no worker can claim anything until
                // the exchange below publishes this job, and everything a claimant reads is written before it.
                _done = 0; _error = null; _body = body; _ctx = ctx;
                Interlocked.Exchange(ref _claim, (long)chunks << 32);
                Interlocked.Increment(ref _generation);
                if (Volatile.Read(ref _sleepers) > 0)
                    lock (_sleepLock) Monitor.PulseAll(_sleepLock);
                Work();
                var spin = new SpinWait();
                while (Volatile.Read(ref _done) < chunks) spin.SpinOnce(-1);
                // Rethrown as it was thrown (type and stack), as if the chunk had run on the caller.
                if (_error != null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(_error);
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
                long claim = Volatile.Read(ref _claim);
                int chunks = (int)(claim >> 32), i = (int)claim;
                if (i >= chunks) return;
                if (Interlocked.CompareExchange(ref _claim, claim + 1, claim) != claim) continue;
                // Any exception (a bad tensor, a bug in a kernel) is handed to the caller, which rethrows it: one escaping
                // a worker thread would end the process.
                try { _body(_ctx, i); }
                catch (Exception e) { Interlocked.CompareExchange(ref _error, e, null); }
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
                Work();
            }
        }

        public void Dispose()
        {
            _disposed = true;
            lock (_sleepLock) Monitor.PulseAll(_sleepLock);
        }
    }
}
