using KvSharp.Compute.Cpu;

namespace KvSharp.Tests.Compute;

/// <summary>
/// The kernel worker pool: every chunk of a job runs exactly once and only while its <see cref="CpuThreads.Run"/> call is
/// in flight (the job's context lives on the caller's stack), and a failing chunk surfaces as an exception on the caller.
/// </summary>
[Collection("CpuThreads")]
public unsafe class CpuThreadsTests
{
    private struct Probe
    {
        public int* Runs;
        public int Active;
        public int Late;
        public int Throw;
    }

    /// <summary>
    /// Four workers per core (so workers get preempted between claiming a chunk and checking it) and back-to-back jobs of
    /// random sizes, each larger or smaller than the one before: a claim left over from one job must never run a chunk of
    /// the next. The pool before the single-word claim failed this on the 2-core development machine about once per
    /// 200,000 jobs with 8 threads (39 chunks run twice, 2 of them after their job had returned, in 7 million jobs: the
    /// stale-stack-frame crash); this test runs about that many jobs per second there.
    /// </summary>
    [Fact]
    public void EveryChunkRunsOnceWhileItsJobIsInFlight()
    {
        int before = CpuThreads.Count;
        try
        {
            CpuThreads.Count = 4 * Environment.ProcessorCount;
            var runs = stackalloc int[64];
            var rng = new Random(5);
            var stop = System.Diagnostics.Stopwatch.StartNew();
            for (int job = 0; stop.ElapsedMilliseconds < 1000; job++)
            {
                int chunks = 1 + rng.Next(64);
                for (int i = 0; i < chunks; i++) runs[i] = 0;
                var probe = new Probe { Runs = runs, Active = 1, Throw = -1 };
                CpuThreads.Run(chunks, &Body, &probe);
                Volatile.Write(ref probe.Active, 0);
                for (int i = 0; i < chunks; i++)
                    Assert.True(runs[i] == 1, $"job {job}: chunk {i} of {chunks} ran {runs[i]} times");
                Assert.Equal(0, Volatile.Read(ref probe.Late));
            }
        }
        finally
        {
            CpuThreads.Count = before;
        }
    }

    /// <summary>
    /// A chunk that throws on a worker: the caller gets that exception (same type and message) once every other chunk is
    /// done, instead of the process dying of an unhandled exception on a worker thread, and the pool keeps working.
    /// </summary>
    [Fact]
    public void AWorkerExceptionIsRethrownOnTheCaller()
    {
        int before = CpuThreads.Count;
        try
        {
            CpuThreads.Count = 4;
            var runs = stackalloc int[64];
            var probe = stackalloc Probe[1];
            for (int attempt = 0; attempt < 50; attempt++)
            {
                for (int i = 0; i < 64; i++) runs[i] = 0;
                *probe = new Probe { Runs = runs, Active = 1, Throw = attempt % 64 };
                var e = Assert.Throws<InvalidOperationException>(() => RunProbe(64, probe));
                Assert.Equal($"chunk {attempt % 64} failed", e.Message);
                for (int i = 0; i < 64; i++) Assert.Equal(1, runs[i]);

                *probe = new Probe { Runs = runs, Active = 1, Throw = -1 };
                RunProbe(64, probe);
                for (int i = 0; i < 64; i++) Assert.Equal(2, runs[i]);
            }
        }
        finally
        {
            CpuThreads.Count = before;
        }
    }

    /// <summary>
    /// Without a pool (one thread, or the pool busy with another caller's job) the chunks run inline on the caller: a
    /// throwing chunk must not leave the later chunks undone either, and the caller still gets its exception.
    /// </summary>
    [Fact]
    public void AnInlineRunFinishesEveryChunkBeforeRethrowing()
    {
        int before = CpuThreads.Count;
        try
        {
            CpuThreads.Count = 1;
            var runs = stackalloc int[16];
            var probe = stackalloc Probe[1];
            *probe = new Probe { Runs = runs, Active = 1, Throw = 3 };
            var e = Assert.Throws<InvalidOperationException>(() => RunProbe(16, probe));
            Assert.Equal("chunk 3 failed", e.Message);
            for (int i = 0; i < 16; i++) Assert.Equal(1, runs[i]);
        }
        finally
        {
            CpuThreads.Count = before;
        }
    }

    private static void RunProbe(int chunks, Probe* probe) => CpuThreads.Run(chunks, &Body, probe);

    private static void Body(void* ctx, int chunk)
    {
        var p = (Probe*)ctx;
        Interlocked.Increment(ref p->Runs[chunk]);
        if (Volatile.Read(ref p->Active) == 0) Interlocked.Increment(ref p->Late);
        if (chunk == p->Throw) throw new InvalidOperationException($"chunk {chunk} failed");
    }
}
