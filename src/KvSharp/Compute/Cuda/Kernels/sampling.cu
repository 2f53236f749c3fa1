// Sampling of the next token from one row of logits on the device, with the CPU sampler's stages and rules
// (Generation/Sampling/Sampler.cs): repetition penalty → top-k → top-p → min-p → temperature → draw. The ranking runs in
// one block of 1024 threads (sample_logits), after the penalty (sample_penalty) and, when top-k keeps at most 1024 tokens
// (and for greedy), after sample_slices has cut every 1024-token slice of the vocabulary to its best k in parallel; the
// logits stay where the output head wrote them, only the token comes back.
//
// The kept set of every stage is a prefix of the vocabulary in "rank order" (logit descending, lower id first on
// ties). Top-k and top-p find where that prefix ends without sorting: a radix select over an order-preserving 32-bit key
// of the logit, 8 bits at a time, that sums a count (top-k) or a probability mass (top-p) per digit and descends into the
// digit where the running total reaches the target; the tokens that share the final key are then taken in id order.
// Each stage compacts the survivors (id order) into the other half of a ping-pong scratch, so later stages read only
// them (after top-k 40: 40 tokens). The draw walks the survivors in id order, as the CPU sampler's does: u · Σ p lands
// in the first token whose running sum exceeds it. Sums are float64; the order of additions differs from the CPU's,
// so the two can disagree only where a running sum falls within rounding of a boundary.
#include "common.cuh"

#define SAMPLE_THREADS 1024
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)

// Order-preserving key: a larger logit has a larger key; NaN is below everything (never kept ahead of a number).
__device__ __forceinline__ unsigned rank_key(float v)
{
    if (v != v) return 0u;
    const unsigned b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Exclusive prefix over the block of one value per thread; total gets the block's sum. Every thread must call it.
template <typename T>
__device__ T block_exclusive_scan(T x, T& total)
{
    __shared__ T warp_totals[SAMPLE_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    T inclusive = x;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1)
    {
        const T y = __shfl_up_sync(0xffffffffu, inclusive, o);
        if (lane >= o) inclusive += y;
    }
    __syncthreads(); // an earlier call may still read warp_totals
    if (lane == 31) warp_totals[warp] = inclusive;
    __syncthreads();
    if (warp == 0)
    {
        T w = warp_totals[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1)
        {
            const T y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        warp_totals[lane] = w; // inclusive over warps
    }
    __syncthreads();
    total = warp_totals[SAMPLE_WARPS - 1];
    return (warp ? warp_totals[warp - 1] : T(0)) + inclusive - x;
}

// Thread t's contiguous share [begin, end) of n items (id order is kept by giving each thread one run).
__device__ __forceinline__ void share_of(int n, int& begin, int& end)
{
    const int per = (n + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    begin = min(n, (int)threadIdx.x * per);
    end = min(n, begin + per);
}

// The survivors of a stage: ids and logits, in id order.
struct Candidates
{
    int* id;
    float* v;
    int n;
};

// Copies the candidates for which keep(id, v) holds, in id order, into out; returns how many. Every thread must call it.
template <typename Keep>
__device__ int compact(const Candidates& in, Candidates& out, Keep keep)
{
    int begin, end;
    share_of(in.n, begin, end);
    int count = 0;
    for (int i = begin; i < end; i++) count += keep(in.id[i], in.v[i]) ? 1 : 0;
    int total;
    int at = block_exclusive_scan<int>(count, total);
    for (int i = begin; i < end; i++)
        if (keep(in.id[i], in.v[i])) { out.id[at] = in.id[i]; out.v[at] = in.v[i]; at++; }
    out.n = total;
    __syncthreads(); // out is read by every thread next
    return total;
}

// hist[bin] += w for the active lanes of a warp, one atomic per distinct bin: the logits crowd into few bins (the top
// byte of the key is the sign and 7 exponent bits), and 32 lanes adding to one float64 in shared memory would queue.
// Every lane of the warp must call it.
__device__ __forceinline__ void warp_hist_add(double* hist, double* stage, unsigned bin, double w, bool active)
{
    const unsigned lane = threadIdx.x & 31u;
    const unsigned valid = __ballot_sync(0xffffffffu, active);
    if (valid == 0u) return;
    const unsigned peers = __match_any_sync(0xffffffffu, active ? bin : 0xffffffffu) & valid;
    stage[threadIdx.x] = w;
    __syncwarp();
    if (active && (peers & ((1u << lane) - 1u)) == 0u) // the group's lowest lane adds for all of it
    {
        double sum = 0.0;
        for (unsigned m = peers; m != 0u; m &= m - 1u) sum += stage[(threadIdx.x & ~31u) + (unsigned)(__ffs(m) - 1)];
        atomicAdd(&hist[bin], sum);
    }
    __syncwarp();
}

// Radix select in rank order: the key of the candidate at which the running total of weight(i) (over candidates in
// rank order) first reaches target, and in `rest` what is still missing when that key's tokens begin. When no candidate
// reaches it (rounding), key is the last candidate's and rest its tokens' total (all kept).
template <typename Weight>
__device__ void radix_select(const Candidates& c, Weight weight, double target, unsigned& key, double& rest)
{
    __shared__ double hist[256];
    __shared__ double stage[SAMPLE_THREADS];
    __shared__ unsigned s_prefix;
    __shared__ double s_rest;
    unsigned prefix = 0u, mask = 0u;
    if (threadIdx.x == 0) s_rest = target;
    for (int shift = 24; shift >= 0; shift -= 8)
    {
        for (int b = threadIdx.x; b < 256; b += SAMPLE_THREADS) hist[b] = 0.0;
        __syncthreads();
        for (int base = 0; base < c.n; base += SAMPLE_THREADS)
        {
            const int i = base + (int)threadIdx.x;
            const unsigned k = i < c.n ? rank_key(c.v[i]) : 0u;
            const bool active = i < c.n && (k & mask) == prefix;
            warp_hist_add(hist, stage, (k >> shift) & 255u, active ? weight(i) : 0.0, active);
        }
        __syncthreads();
        if (threadIdx.x == 0)
        {
            double r = s_rest;
            int digit = -1, lowest = -1;
            for (int b = 255; b >= 0; b--)
            {
                if (hist[b] == 0.0) continue;
                lowest = b;
                if (r <= hist[b]) { digit = b; break; }
                r -= hist[b];
            }
            if (digit < 0) // rounding: the target lies beyond the total; take the last digit whole
            {
                digit = lowest < 0 ? 0 : lowest;
                r = lowest < 0 ? 0.0 : hist[lowest];
            }
            s_rest = r;
            s_prefix = prefix | ((unsigned)digit << shift);
        }
        __syncthreads();
        prefix = s_prefix;
        mask |= 255u << shift;
    }
    key = prefix;
    rest = s_rest;
    __syncthreads(); // s_rest / s_prefix are rewritten by the next call
}

// Of the candidates whose key is `key`, the id of the m-th (1-based) in id order (m is clamped to their number).
__device__ int nth_tie(const Candidates& c, unsigned key, int m)
{
    __shared__ int s_id;
    int begin, end;
    share_of(c.n, begin, end);
    int count = 0;
    for (int i = begin; i < end; i++) count += rank_key(c.v[i]) == key ? 1 : 0;
    int total;
    const int before = block_exclusive_scan<int>(count, total);
    m = max(1, min(m, total));
    if (before < m && m <= before + count)
    {
        int seen = before;
        for (int i = begin; i < end; i++)
            if (rank_key(c.v[i]) == key && ++seen == m) { s_id = c.id[i]; break; }
    }
    __syncthreads();
    const int id = s_id;
    __syncthreads();
    return id;
}

// Keeps the rank-order prefix that ends at (key, last id): larger keys, and that key's ids up to `last`.
struct RankPrefix
{
    unsigned key;
    int last;
    __device__ bool operator()(int id, float v) const
    {
        const unsigned k = rank_key(v);
        return k > key || (k == key && id <= last);
    }
};

// The largest logit (NaN ignored; -inf if none is a number).
__device__ float block_max(const Candidates& c)
{
    __shared__ float partial[SAMPLE_WARPS];
    float m = neg_inf();
    for (int i = threadIdx.x; i < c.n; i += SAMPLE_THREADS) m = fmaxf(m, c.v[i]); // fmaxf drops NaN
    m = warp_max(m);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = m;
    __syncthreads();
    m = partial[0];
    for (int w = 1; w < SAMPLE_WARPS; w++) m = fmaxf(m, partial[w]);
    __syncthreads();
    return m;
}

// The float of a rank key (rank_key's inverse for numbers).
__device__ __forceinline__ float key_value(unsigned key)
{
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// What the host sets before each token (one upload, so a captured decode graph reads new values at fixed addresses):
// the uniform draw in [0, 1), then the repetition penalty's window (count, then the token ids, oldest first).
struct SampleStep
{
    double u;
    int recent_count;
    int pad;
    int recent[1]; // recent_count of them
};

// The repetition penalty on one row of logits, in place: each distinct token of the step's recent tokens (the last
// tokens, prompt and generated; ids checked by the host) once however often it occurs, the first thread to mark it in
// seen (n zero words, left zero) applying it. Runs before everything that ranks the logits.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_penalty(float* logits, const SampleStep* step, float penalty, unsigned* seen)
{
    pdl_wait(); // a no-op unless launched programmatically (KVSHARP_CUDA_PDL=1)
    const int count = step->recent_count;
    for (int i = threadIdx.x; i < count; i += SAMPLE_THREADS)
    {
        const int id = step->recent[i];
        if (atomicExch(seen + id, 1u) == 0u)
        {
            const float v = logits[id];
            logits[id] = v <= 0.0f ? v * penalty : v / penalty;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < count; i += SAMPLE_THREADS) seen[step->recent[i]] = 0u;
}

// First stage of top-k (k ≤ SAMPLE_SLICE, greedy as k = 1): block b keeps the best k tokens (rank order) of its slice
// [b·SAMPLE_SLICE, (b + 1)·SAMPLE_SLICE) of the vocabulary, found by a bitonic sort of (rank key, complemented id) in
// shared memory, and writes them in id order at b·k of cand_id / cand_v. The vocabulary's best k lie in the union, which
// is in id order and has no gaps (only the last slice can keep fewer than k), so the second stage (sample_logits) ranks
// a few thousand tokens instead of the whole vocabulary.
#define SAMPLE_SLICE SAMPLE_THREADS
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_slices(const float* logits, int n, int k, int* cand_id, float* cand_v)
{
    pdl_wait(); // a no-op unless launched programmatically (KVSHARP_CUDA_PDL=1)
    __shared__ unsigned long long keys[SAMPLE_SLICE];
    const int base = blockIdx.x * SAMPLE_SLICE, i = base + (int)threadIdx.x;
    const bool real = i < n;
    const float v = real ? logits[i] : 0.0f;
    // Larger = earlier in rank order; padding (0) below every token (a token's low word 0xffffffff - id is never 0 here).
    const unsigned long long mine = real ? ((unsigned long long)rank_key(v) << 32) | (0xffffffffu - (unsigned)i) : 0ull;
    keys[threadIdx.x] = mine;
    __syncthreads();
    for (int size = 2; size <= SAMPLE_SLICE; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1)
        {
            const int t = threadIdx.x, other = t ^ stride;
            if (other > t)
            {
                const unsigned long long a = keys[t], b = keys[other];
                if ((t & size) == 0 ? a > b : a < b) { keys[t] = b; keys[other] = a; } // ascending overall
            }
            __syncthreads();
        }
    const int take = min(k, min(SAMPLE_SLICE, n - base));
    const bool keep = real && mine >= keys[SAMPLE_SLICE - take];
    int total;
    const int at = block_exclusive_scan<int>(keep ? 1 : 0, total);
    if (keep)
    {
        cand_id[(long)blockIdx.x * k + at] = i;
        cand_v[(long)blockIdx.x * k + at] = v;
    }
}

// The next token from one row of n logits (penalized by sample_penalty when asked). With cand_n > 0 it ranks only the
// candidates sample_slices left (cand_id / cand_v, id order), which hold the row's best top_k (greedy: best 1).
// scratch_id / scratch_v: 2·n each; scratch_w: n. greedy takes the first largest logit; top_k ≤ 0 or ≥ the tokens
// ranked, top_p ≥ 1 and use_min_p = 0 disable their stage. log_min_p = ln(min_p) and inv_temp = 1 / temperature are
// float32 values the host computes as the CPU sampler does; step->u in [0, 1) is the host generator's draw. Writes the token
// to *out.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_logits(const float* logits, int n, const int* cand_id, const float* cand_v,
    int cand_n, int* scratch_id, float* scratch_v, double* scratch_w, int greedy, int top_k, float top_p, int use_min_p, float log_min_p,
    float inv_temp, const SampleStep* step, int* out)
{
    pdl_wait(); // a no-op unless launched programmatically (KVSHARP_CUDA_PDL=1)
    const double u = step->u;
    Candidates ping{scratch_id, scratch_v, cand_n > 0 ? cand_n : n}, pong{scratch_id + n, scratch_v + n, 0};
    if (cand_n > 0)
        for (int i = threadIdx.x; i < cand_n; i += SAMPLE_THREADS) { ping.id[i] = cand_id[i]; ping.v[i] = cand_v[i]; }
    else
        for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS) { ping.id[i] = i; ping.v[i] = logits[i]; }
    __syncthreads();
    Candidates* cur = &ping;
    Candidates* next = &pong;
    const float vmax = block_max(ping);

    // Top-k (greedy: top-1): the k-th token in rank order by counting.
    if (greedy || (top_k > 0 && top_k < ping.n))
    {
        unsigned key;
        double rest;
        radix_select(*cur, [](int) { return 1.0; }, greedy ? 1.0 : (double)top_k, key, rest);
        const int last = nth_tie(*cur, key, (int)rest);
        if (greedy) // the first largest logit
        {
            if (threadIdx.x == 0) *out = last;
            return;
        }
        compact(*cur, *next, RankPrefix{key, last});
        Candidates* t = cur; cur = next; next = t;
    }

    // Top-p: the shortest rank-order prefix whose mass (temperature 1, exp of the float difference as the CPU computes
    // it) reaches top_p of the whole.
    if (top_p < 1.0f)
    {
        double local = 0.0;
        for (int i = threadIdx.x; i < cur->n; i += SAMPLE_THREADS)
        {
            const double e = exp((double)(cur->v[i] - vmax));
            scratch_w[i] = e;
            local += e;
        }
        double sum;
        block_exclusive_scan<double>(local, sum);
        if (sum > 0.0 && sum <= 1.7976931348623157e308) // the CPU keeps everything when nothing has a probability
        {
            unsigned key;
            double rest;
            const double* w = scratch_w;
            radix_select(*cur, [w](int i) { return w[i]; }, (double)top_p * sum, key, rest);
            // The tokens sharing the crossing key weigh the same: the first m of them (id order) complete the mass.
            const double e = exp((double)(key_value(key) - vmax));
            const double m = e > 0.0 ? ceil(rest / e) : 1.0;
            const int last = nth_tie(*cur, key, (int)fmin(m, 2.0e9));
            compact(*cur, *next, RankPrefix{key, last});
            Candidates* t = cur; cur = next; next = t;
        }
    }

    // Min-p: drop logits below max + ln(min_p) (in float32, as the CPU compares; NaN is not below and stays).
    if (use_min_p)
    {
        const float threshold = vmax + log_min_p;
        compact(*cur, *next, [threshold](int, float v) { return !(v < threshold); });
        Candidates* t = cur; cur = next; next = t;
    }

    // Draw in id order: the first token whose running sum of exp((v - max) / T) exceeds u · Σ.
    __shared__ int s_pick;
    __shared__ int s_last;
    if (threadIdx.x == 0) { s_pick = 0x7fffffff; s_last = -1; }
    int begin, end;
    share_of(cur->n, begin, end);
    double local = 0.0;
    for (int i = begin; i < end; i++)
    {
        const double e = exp(((double)cur->v[i] - (double)vmax) * (double)inv_temp);
        scratch_w[i] = e;
        if (e > 0.0) local += e;
    }
    double sum;
    const double before = block_exclusive_scan<double>(local, sum);
    if (!(sum > 0.0) || !(sum <= 1.7976931348623157e308))
    {
        if (threadIdx.x == 0) *out = cur->id[0]; // nothing to draw from: the first candidate, as the CPU
        return;
    }
    // The run whose share of the sum holds the target walks it again with the same additions as its local sum.
    const double rel = u * sum - before;
    if (rel >= 0.0 && rel < local)
    {
        double cumulative = 0.0;
        for (int i = begin; i < end; i++)
        {
            if (!(scratch_w[i] > 0.0)) continue;
            cumulative += scratch_w[i];
            if (rel < cumulative) { atomicMin(&s_pick, i); break; }
        }
    }
    for (int i = end - 1; i >= begin; i--)
        if (scratch_w[i] > 0.0) { atomicMax(&s_last, i); break; }
    __syncthreads();
    if (threadIdx.x == 0) *out = cur->id[s_pick != 0x7fffffff ? s_pick : s_last]; // past the end through rounding: the last one
}

// After the draw in a captured decode step: the token (already in *next, the next step's input) joins the history at
// the row's position, which advances by one (as argmax_finish does for the greedy graph).
extern "C" __global__ void sample_commit(const int* next, int* history, int* pos)
{
    pdl_wait(); // a no-op unless launched programmatically (KVSHARP_CUDA_PDL=1)
    history[pos[0]] = next[0];
    pos[0] += 1;
}
