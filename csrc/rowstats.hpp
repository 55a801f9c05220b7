// Per-row statistics shared by the row kernels (rows.cpp) and the cross-entropy (ce.cpp):
// the row's max, the sum of its exponentials, and the write pass; per SIMD target.
//
// A row is walked in chunks of kChunk entries, small enough to stay in L1 between the chunk's
// max (one read from memory) and its exponential sum (a read from cache that may also write the
// output: the exponentials for softmax, the shifted logits for log_softmax).  The running
// (max, sum) is rescaled when a later chunk raises the max (Milakov & Gimelshein 2018), and the
// max each chunk's outputs were taken against is recorded, so that the write pass rescales
// them (softmax) or shifts them (log_softmax) from cache.
//
// Sums: float rows sum their exponentials in float lanes over blocks of kSumBlock entries
// and in double across blocks (within the DESIGN §7 bounds at a third less work per entry).
// double rows keep Blanchard–Higham–Higham's split: the entries equal to the max contribute
// exactly 1 each and are counted (`top`), the others summed (`rest`), so that
// log(sum) = log1p(rest + top − 1) keeps a dominant row's tiny terms; the chunk sums are
// added with Neumaier's compensation, so that rows of 10^5 near-equal terms stay within the
// bound.  Lanes are explicit: nothing is reassociated by the compiler, NaN and inf keep their
// meaning, and every entry (tails included) goes through the same instructions.
//
// Rows the fast formulas cannot compute are flagged `special` and left to the caller: an
// unmasked NaN, a +inf, nothing finite, and rows whose shifted logits x − max would overflow
// (|x| near the top of the float range with a temperature above 1).
#pragma once

#include <cmath>
#include <cstdlib>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "kernels.hpp"
#include "simd.hpp"

namespace lk {
namespace LK_TARGET {

constexpr int64_t kChunk = 2048;
constexpr int64_t kSumBlock = 256;
constexpr int64_t kBlockBytes = 16384;
constexpr int64_t kMaxBlockRows = 64;

enum Store : int { STORE_NONE = 0, STORE_EXP = 1, STORE_SHIFTED = 2 };

template <class T> LK_INLINE T inf() { return __builtin_inf(); }
template <class T> LK_INLINE T nan() { return __builtin_nan(""); }
template <class T> constexpr double kMaxOf = sizeof(T) == 4 ? 3.4028234663852886e38 : 1.7976931348623157e308;
// Below this max, x − max cannot overflow for x ≥ −kMaxOf (half an ulp of the largest finite).
template <class T> constexpr double kShiftSafe = sizeof(T) == 4 ? 1.0141204801825835e31 : 9.9792015476736e291;

struct Stats {
    double m;     // the row's max (of the live entries; −inf when none)
    double rest;  // Σ e^{(x−m)/T} over entries below the max (float: over all entries, top = 0)
    double top;   // entries equal to the max (double rows)
    bool special;
};

template <class T> LK_INLINE void* alloc(int64_t n) {
    return std::malloc(static_cast<size_t>(n > 0 ? n : 1) * sizeof(T));
}

// Max of the live entries of src[0, n); −inf when none.  NaN is ignored here (the sum finds it).
template <class T, bool MASK>
LK_INLINE T chunk_max(const T* src, const uint8_t* mask, int64_t n) {
    constexpr int L = kL<T>;
    const VF<T> ninf = splat<T>(-inf<T>());
    VF<T> a0 = ninf, a1 = ninf;
    int64_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
        VF<T> v0 = load<T>(src + i), v1 = load<T>(src + i + L);
        if (MASK) {
            v0 = select<T>(load_mask<T>(mask + i), v0, ninf);
            v1 = select<T>(load_mask<T>(mask + i + L), v1, ninf);
        }
        a0 = vmax<T>(v0, a0);
        a1 = vmax<T>(v1, a1);
    }
    for (; i < n; i += L) {
        int64_t r = n - i;
        VF<T> v = r >= L ? load<T>(src + i) : load_part<T>(src + i, r, -inf<T>());
        if (MASK) v = select<T>(r >= L ? load_mask<T>(mask + i) : load_mask_part<T>(mask + i, r), v, ninf);
        a0 = vmax<T>(v, a0);
    }
    return hmax<T>(vmax<T>(a1, a0));
}

// Max, min and "holds a NaN" of the live entries of src[0, n) in one read (max −inf and min
// +inf when nothing is live): what a kernel must know before it may overwrite its input.
struct Scan {
    double max, min;
    bool nan;
};
template <class T, bool MASK>
Scan scan_row(const T* src, const uint8_t* mask, int64_t n) {
    constexpr int L = kL<T>;
    const VF<T> ninf = splat<T>(-inf<T>()), pinf = splat<T>(inf<T>());
    VF<T> hi = ninf, lo = pinf;
    VI<T> bad = VI<T>{} != 0;
    for (int64_t i = 0; i < n; i += L) {
        int64_t r = n - i;
        VF<T> v = r >= L ? load<T>(src + i) : load_part<T>(src + i, r, -inf<T>());
        VI<T> live = VI<T>{} == 0;
        if (MASK) live = r >= L ? load_mask<T>(mask + i) : load_mask_part<T>(mask + i, r);
        if (r < L) {
            T pad[kL<T>];
            for (int l = 0; l < L; ++l) pad[l] = l < r ? T(0) : T(1);
            live = live & (load<T>(pad) == T(0));
        }
        bad |= live & (v != v);
        hi = vmax<T>(select<T>(live, v, ninf), hi);
        VF<T> w = select<T>(live, v, pinf);
        lo = w < lo ? w : lo;
    }
    T l[kL<T>];
    store<T>(l, lo);
    double mn = inf<double>();
    for (int i = 0; i < L; ++i) mn = l[i] < mn ? l[i] : mn;
    VI<T> zero = VI<T>{};
    bool any_nan = false;
    for (int i = 0; i < L; ++i) any_nan = any_nan || bad[i] != zero[i];
    return Scan{static_cast<double>(hmax<T>(hi)), mn, any_nan};
}

// Neumaier's compensated addition of v into (s, c) (an infinite or NaN sum is left as is:
// its compensation would be NaN).
LK_INLINE void neumaier(double& s, double& c, double v) {
    double t = s + v;
    if (t - t == 0) c += (std::fabs(s) >= std::fabs(v)) ? (s - t) + v : (v - t) + s;
    s = t;
}

// One vector of the sum pass: d = (x − m)/T (masked: −inf), e = exp(d), stored as asked.
// FULL: L entries; else the r < L entries of a row's tail.
template <class T, bool MASK, int STORE, bool FULL, bool UNIT>
LK_INLINE VF<T> exp_step(const T* src, const uint8_t* mask, T* out, int64_t r, VF<T> m, VF<T> inv_t,
                         VF<T>& d) {
    VF<T> v = FULL ? load<T>(src) : load_part<T>(src, r, -inf<T>());
    if (MASK) v = select<T>(FULL ? load_mask<T>(mask) : load_mask_part<T>(mask, r), v, splat<T>(-inf<T>()));
    d = UNIT ? v - m : (v - m) * inv_t;  // T = 1 skips an exact multiply
    VF<T> e = vexp<T>(d);
    if (STORE == STORE_EXP) {
        if (FULL) store<T>(out, e); else store_part<T>(out, e, r);
    } else if (STORE == STORE_SHIFTED) {
        if (FULL) store<T>(out, d); else store_part<T>(out, d, r);
    }
    return e;
}

// Σ e^{(x − m)/T} over src[0, n) into (rest, comp, top); m finite.  `next` (or null) is the
// next chunk of the row, fetched into cache while this one's exponentials keep the core busy:
// its max pass then reads from cache, and the memory reads overlap the arithmetic.
template <class T, bool MASK, int STORE, bool UNIT>
LK_INLINE void chunk_sum_t(const T* src, const uint8_t* mask, int64_t n, T m, T inv_t, T* out,
                           double& rest, double& comp, double& top, const T* next, int64_t n_next) {
    constexpr int L = kL<T>;
    constexpr int64_t kLine = 64 / sizeof(T);
    const VF<T> vm = splat<T>(m), vt = splat<T>(inv_t);
    // One prefetch per cache line of the next chunk: entry i of this chunk fetches entry i of
    // the next (which is never longer), a compare and a prefetch per vector at most.
    if (next == nullptr) n_next = 0;
    VF<T> d;
    if (sizeof(T) == 4) {
        for (int64_t b0 = 0; b0 < n; b0 += kSumBlock) {
            int64_t b1 = b0 + kSumBlock < n ? b0 + kSumBlock : n;
            VF<T> acc = splat<T>(0);
            int64_t i = b0;
            for (; i + L <= b1; i += L) {
                if (i < n_next && i % kLine == 0) __builtin_prefetch(next + i, 0, 3);
                acc += exp_step<T, MASK, STORE, true, UNIT>(src + i, MASK ? mask + i : nullptr, out + i, L, vm, vt, d);
            }
            if (i < b1)
                acc += exp_step<T, MASK, STORE, false, UNIT>(src + i, MASK ? mask + i : nullptr, out + i, b1 - i, vm, vt, d);
            rest += hsum_wide(acc);
        }
    } else {
        // Lanes over blocks of kSumBlock entries (32 terms per lane at most), the block sums
        // added with compensation: a row of 10^5 terms near 1 stays within a few u.
        for (int64_t b0 = 0; b0 < n; b0 += kSumBlock) {
            int64_t b1 = b0 + kSumBlock < n ? b0 + kSumBlock : n;
            VF<T> acc = splat<T>(0), cnt = splat<T>(0);
            int64_t i = b0;
            for (; i + L <= b1; i += L) {
                if (i < n_next && i % kLine == 0) __builtin_prefetch(next + i, 0, 3);
                VF<T> e = exp_step<T, MASK, STORE, true, UNIT>(src + i, MASK ? mask + i : nullptr, out + i, L, vm, vt, d);
                VI<T> at_top = d == T(0);
                acc += at_top ? splat<T>(0) : e;  // arithmetic, not a branch: NaN stays in acc
                cnt += at_top ? splat<T>(1) : splat<T>(0);
            }
            if (i < b1) {
                VF<T> e = exp_step<T, MASK, STORE, false, UNIT>(src + i, MASK ? mask + i : nullptr, out + i, b1 - i, vm, vt, d);
                VI<T> at_top = d == T(0);
                acc += at_top ? splat<T>(0) : e;
                cnt += at_top ? splat<T>(1) : splat<T>(0);
            }
            neumaier(rest, comp, hsum<T>(acc));
            top += hsum<T>(cnt);
        }
    }
}

template <class T, bool MASK, int STORE>
LK_INLINE void chunk_sum(const T* src, const uint8_t* mask, int64_t n, T m, T inv_t, T* out,
                         double& rest, double& comp, double& top, const T* next, int64_t n_next) {
    if (inv_t == T(1))
        chunk_sum_t<T, MASK, STORE, true>(src, mask, n, m, inv_t, out, rest, comp, top, next, n_next);
    else
        chunk_sum_t<T, MASK, STORE, false>(src, mask, n, m, inv_t, out, rest, comp, top, next, n_next);
}

// Pass 1 over src[0, k) (a row, or a segment of one): the online (max, sum).  With STORE the
// exponentials or shifted logits go to out, and chunk_m[c] records the max chunk c's were
// taken against (−inf: nothing live yet; then 0 or −inf was stored).
template <class T, bool MASK, int STORE>
Stats pass1(const T* src, const uint8_t* mask, int64_t k, T inv_t, T* out, double* chunk_m) {
    double m = -inf<double>(), rest = 0, comp = 0, top = 0;
    int64_t c = 0;
    for (int64_t c0 = 0; c0 < k; c0 += kChunk, ++c) {
        int64_t n = k - c0 < kChunk ? k - c0 : kChunk;
        const uint8_t* mc = MASK ? mask + c0 : nullptr;
        double cm = chunk_max<T, MASK>(src + c0, mc, n);
        if (cm == inf<double>()) return Stats{cm, nan<double>(), 0, true};
        if (cm > m) {
            if (rest != 0 || comp != 0 || top != 0) {
                double f = std::exp((m - cm) * static_cast<double>(inv_t));
                rest = (rest + comp + top) * f;
                comp = 0;
                top = 0;
            }
            m = cm;
        }
        if (chunk_m != nullptr) chunk_m[c] = m;
        if (m == -inf<double>()) {  // nothing live so far
            if (STORE == STORE_EXP) for (int64_t i = 0; i < n; ++i) out[c0 + i] = T(0);
            if (STORE == STORE_SHIFTED) for (int64_t i = 0; i < n; ++i) out[c0 + i] = -inf<T>();
            continue;
        }
        int64_t n_next = k - c0 - n < kChunk ? k - c0 - n : kChunk;
        chunk_sum<T, MASK, STORE>(src + c0, mc, n, static_cast<T>(m), inv_t, out + c0, rest, comp, top,
                                  n_next > 0 ? src + c0 + n : nullptr, n_next);
        if (rest != rest) return Stats{m, nan<double>(), 0, true};
    }
    rest += comp;
    return Stats{m, rest, top, !(m > -inf<double>())};
}

// Pass 1 of a row of one chunk (k ≤ kChunk) whose max m (chunk_max) is already known: what
// pass1 computes for it.  Short rows run in two loops over a block, every row's max and then
// every row's sum, so that the core overlaps one row's reductions (a chain of dependent
// latencies: max, horizontal max, exponentials, horizontal sum) with the next row's instead
// of waiting on each in turn; at 128 entries a row that is most of its cost.
template <class T, bool MASK, int STORE>
LK_INLINE Stats pass1_known(const T* src, const uint8_t* mask, int64_t k, T inv_t, T* out, double* chunk_m,
                            double m) {
    if (m == inf<double>()) return Stats{m, nan<double>(), 0, true};
    if (chunk_m != nullptr) chunk_m[0] = m;
    if (m == -inf<double>()) {  // nothing live
        if (STORE == STORE_EXP) for (int64_t i = 0; i < k; ++i) out[i] = T(0);
        if (STORE == STORE_SHIFTED) for (int64_t i = 0; i < k; ++i) out[i] = -inf<T>();
        return Stats{m, 0, 0, true};
    }
    double rest = 0, comp = 0, top = 0;
    chunk_sum<T, MASK, STORE>(src, mask, k, static_cast<T>(m), inv_t, out, rest, comp, top, nullptr, 0);
    if (rest != rest) return Stats{m, nan<double>(), 0, true};
    return Stats{m, rest + comp, top, false};
}

// Software prefetch for a block of short rows, issued row by row from the block's max loop
// (which waits on memory anyway): the same row of the next block (null past the range), into
// L2, so that the next block's max loop reads from cache (A/B, one thread, 65536x128:
// logsumexp 5-11% faster, softmax and the cross-entropy 2-5%).  Prefetching the output rows for
// writing as well was no faster on float rows and 5% slower on float64 ones.
template <class T> LK_INLINE void prefetch_row(const T* ahead, int64_t k) {
    constexpr int64_t kLine = 64 / sizeof(T);
    if (ahead != nullptr)
        for (int64_t i = 0; i < k; i += kLine) __builtin_prefetch(ahead + i, 0, 2);
}

// Rows whose shifted logits x − max overflow (only possible when the max is within half an
// ulp of the top of the range from the min): the callers send them to the generic path, which
// divides by the temperature in a safe order.  Rare: only checked above kShiftSafe.
template <class T, bool MASK>
bool shift_overflows(const T* src, const uint8_t* mask, int64_t k, double m) {
    if (!(m > kShiftSafe<T>)) return false;
    double lo = m;
    for (int64_t i = 0; i < k; ++i)
        if ((!MASK || mask[i]) && static_cast<double>(src[i]) < lo) lo = src[i];
    return m - lo > kMaxOf<T>;
}

// log1p(a) lane-wise over a[0, n) into out (the rows' log-sums, a block at a time: one
// vectorised loop instead of a libm call per row, which costs as much as a 128-wide row).
LK_INLINE void block_log1p(const double* a, double* out, int64_t n) {
    constexpr int L = kL<double>;
    for (int64_t i = 0; i < n; i += L) {
        int64_t r = n - i;
        VF<double> v = r >= L ? load<double>(a + i) : load_part<double>(a + i, r, 0.0);
        VF<double> l = vlog1p(v);
        if (r >= L) store<double>(out + i, l); else store_part<double>(out + i, l, r);
    }
}

// The write pass over chunks [c_first, c_last) of a row: softmax rescales the stored
// exponentials of chunk c by factor·e^{(m_c − m)/T}/S, log_softmax shifts its stored (x − m_c)/T by
// (m − m_c)/T + log S.  Chunks with nothing live (m_c = −inf) already hold their values.
template <class T>
LK_INLINE void pass2(T* out, int64_t k, int64_t c_first, int64_t c_last, int mode, double m, double inv_t,
           double sum, double log_s, const double* chunk_m, double factor = 1.0) {
    constexpr int L = kL<T>;
    for (int64_t c = c_first; c < c_last; ++c) {
        double mc = chunk_m[c];
        if (mc == -inf<double>()) continue;
        int64_t c0 = c * kChunk, c1 = c0 + kChunk < k ? c0 + kChunk : k;
        if (mode == SOFTMAX) {
            T f = static_cast<T>(factor * (mc == m ? 1.0 : std::exp((mc - m) * inv_t)) / sum);
            int64_t i = c0;
            for (; i + L <= c1; i += L) store<T>(out + i, load<T>(out + i) * f);
            for (; i < c1; ++i) out[i] = out[i] * f;
        } else {
            T off = static_cast<T>((m - mc) * inv_t + log_s);
            int64_t i = c0;
            for (; i + L <= c1; i += L) store<T>(out + i, load<T>(out + i) - off);
            for (; i < c1; ++i) out[i] = out[i] - off;
        }
    }
}

// Non-temporal ("streaming") stores: a large output written once goes straight to memory,
// without first reading each of its cache lines in (a plain store's read for ownership), which
// is a third of the memory traffic of a softmax.  Used for outputs far larger than the caches
// only (stream_min_bytes(): 3/4 of the last-level cache): a smaller output is better left in
// cache for its reader.
constexpr int64_t kStreamRowBytes = int64_t(1) << 20;  // a row's scratch stays in L2

// Whether an output of n rows of row_bytes is streamed (stream_min_bytes(): kernels.hpp).
LK_INLINE bool streamed(int64_t n, int64_t row_bytes) {
    return n * row_bytes >= stream_min_bytes() && row_bytes <= kStreamRowBytes;
}

template <class T> LK_INLINE void stream_store(T* p, VF<T> v) {
#if defined(__AVX512F__)
    if (sizeof(T) == 4) _mm512_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<__m512&>(v));
    else _mm512_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<__m512d&>(v));
#elif defined(__AVX__)
    if (sizeof(T) == 4) _mm256_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<__m256&>(v));
    else _mm256_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<__m256d&>(v));
#elif defined(__SSE2__)
    if (sizeof(T) == 4) _mm_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<__m128&>(v));
    else _mm_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<__m128d&>(v));
#else
    store<T>(p, v);
#endif
}

// Orders this thread's streaming stores before whatever follows (a task's end, a plain store).
LK_INLINE void stream_fence() {
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

// The write pass from a scratch row (as pass2 computes it in place) into out, streamed: the
// entries before out's first 64-byte boundary and the tail by plain stores, the rest by
// aligned streaming stores.  The caller fences.
template <class T>
void pass2_stream(const T* src, T* out, int64_t k, int mode, double m, double inv_t, double sum,
                  double log_s, const double* chunk_m, double factor = 1.0, int64_t at = -1,
                  T minus = T(0)) {
    // `minus` comes off entry `at` (the cross-entropy's −s/T on the label), after the scaling,
    // as pass2's caller does it.
    constexpr int L = kL<T>;
    const int64_t nchunks = (k + kChunk - 1) / kChunk;
    // out[head] is the row's first entry on a 64-byte boundary (streaming stores need one).
    const int64_t head = static_cast<int64_t>((64 - reinterpret_cast<uintptr_t>(out) % 64) % 64) / static_cast<int64_t>(sizeof(T));
    if (reinterpret_cast<uintptr_t>(out) % sizeof(T) != 0) {  // never: NumPy aligns its floats
        std::memcpy(out, src, sizeof(T) * static_cast<size_t>(k));
        pass2<T>(out, k, 0, nchunks, mode, m, inv_t, sum, log_s, chunk_m, factor);
        if (at >= 0) out[at] -= minus;
        return;
    }
    for (int64_t c = 0; c < nchunks; ++c) {
        int64_t c0 = c * kChunk, c1 = c0 + kChunk < k ? c0 + kChunk : k;
        double mc = chunk_m[c];
        T f = T(1), off = T(0);
        if (mode == SOFTMAX) {
            f = mc == -inf<double>() ? T(0) : static_cast<T>(factor * (mc == m ? 1.0 : std::exp((mc - m) * inv_t)) / sum);
        } else {
            off = mc == -inf<double>() ? T(0) : static_cast<T>((m - mc) * inv_t + log_s);
        }
        auto one = [&](int64_t i) {
            T v = mode == SOFTMAX ? src[i] * f : src[i] - off;
            out[i] = i == at ? v - minus : v;
        };
        // Plain stores up to the chunk's first entry on a 64-byte boundary.
        constexpr int64_t kLine = 64 / sizeof(T);
        const int64_t aligned = c0 + (((head - c0) % kLine) + kLine) % kLine;
        int64_t i = c0;
        for (; i < c1 && i < aligned; ++i) one(i);
        for (; i + L <= c1; i += L) {
            VF<T> v = mode == SOFTMAX ? load<T>(src + i) * f : load<T>(src + i) - off;
            if (at >= i && at < i + L) v[at - i] -= minus;
            stream_store<T>(out + i, v);
        }
        for (; i < c1; ++i) one(i);
    }
}

// y = c·tanh(x/c), masked entries set to 0 first (as the generic path), into y[0, k).
template <class T, bool MASK>
void softcap_row(const T* x, const uint8_t* mask, int64_t k, T cap, T* y) {
    constexpr int L = kL<T>;
    const VF<T> vc = splat<T>(cap);
    for (int64_t i = 0; i < k; i += L) {
        int64_t r = k - i;
        VF<T> v = r >= L ? load<T>(x + i) : load_part<T>(x + i, r, T(0));
        if (MASK) v = select<T>(r >= L ? load_mask<T>(mask + i) : load_mask_part<T>(mask + i, r), v, splat<T>(0));
        VF<T> t = vc * vtanh<T>(v / vc);
        if (r >= L) store<T>(y + i, t); else store_part<T>(y + i, t, r);
    }
}

// Run f(i) for i in [0, ntasks) on the pool (kernels.hpp's parallel_for).
template <class F> void run_tasks(int64_t ntasks, double ns_per_task, F& f) {
    ::lk::parallel_for(ntasks, ns_per_task, [](void* ctx, int64_t i) { (*static_cast<F*>(ctx))(i); }, &f);
}

// Tasks for n items costing ns_each: enough for every thread to take several (load balance,
// and a preempted helper holds back little), never below a few microseconds each.
LK_INLINE int64_t task_count(int64_t n, double ns_each) {
    int64_t by_threads = 8 * static_cast<int64_t>(num_threads());
    double total = ns_each * static_cast<double>(n);
    int64_t by_size = static_cast<int64_t>(total / 5000.0) + 1;
    int64_t t = by_threads < by_size ? by_threads : by_size;
    return t < 1 ? 1 : (t > n ? n : t);
}

// The first r entries of p (all lanes when r ≥ the lanes of double) as float64 lanes, the
// others `fill`: float32 rows read by float64 arithmetic (beta.cpp, affine.cpp).
template <class T> LK_INLINE VF<double> load_f64(const T* p, int64_t r, double fill) {
    constexpr int L = kL<double>;
    if constexpr (sizeof(T) == 8) {
        return r >= L ? load<double>(p) : load_part<double>(p, r, fill);
    } else {
        typedef float H __attribute__((vector_size(kVectorBytes / 2)));
        H h;
        if (r >= L) {
            std::memcpy(&h, p, sizeof h);
        } else {
            float buf[L];
            for (int l = 0; l < L; ++l) buf[l] = l < r ? p[l] : static_cast<float>(fill);
            std::memcpy(&h, buf, sizeof h);
        }
        return __builtin_convertvector(h, VF<double>);
    }
}

}  // namespace LK_TARGET
}  // namespace lk
