// The calibration engine's one pass (calibration/_engine.py): every row of probabilities or
// logits read once, its statistics binned and summed per row group in float64.
//
// Per row i (label y, p the probabilities; from logits p = softmax(β·x), never formed):
//
//     conf = max_k p_k, pred = its first arg-max, hit = [pred = y],
//     −log p_y, Brier = Σ_k p_k² − 2 p_y + 1,
//
// then, for row group g(i) (i < G: i itself; beyond, SplitMix64(i) mod G, as _engine.group_of),
// the totals (rows, hits, Σ −log p_y, Σ Brier), the top-label bin of conf (count, Σ conf,
// Σ hit, and with `moments` Σ conf², Σ conf·hit) and, class-wise, the bin of every p_k (count,
// Σ p, Σ p², and at the label Σ hit, Σ p·hit).
//
// Probabilities: one read of the row gives its max and first arg-max, min, Σ p and Σ p² (a NaN
// makes the sums NaN; the row sum is within 5e-6 of its exact value, the caller allows for
// that).  A row that is not clearly valid (a NaN, an entry below 0 or above 1, a sum off by more
// than `tol`), or a label out of range, stops the pass: the caller's own validation then judges
// the input and says what is wrong.
// Logits: a read for the max and arg-max, then, from cache, e = exp(β(x − max)) in x's precision:
// Σ e split into the entries at the max (exactly 1 each) and the rest, so that
// log Σ e = log1p(rest + top − 1) keeps a dominant row's small terms, and Σ e² for the Brier
// score; conf = 1/Σe, log p_y = β(x_y − max) − log Σe (exact where log(softmax) would underflow).
// Rows with a NaN, a +inf or nothing finite are flagged and left to the caller.
// The logs and exps of a block of rows are taken in one vectorised loop, and its bins found in
// another.  No arithmetic has a subnormal result (exp and squares flushed to 0 far below the
// sums' rounding): each would cost a microcode assist.  Rows of K ≤ 32 (no class-wise bins) run
// one per SIMD lane, their columns gathered (float rows on AVX-512 two columns a gather), and
// everything per row after the read is done on all lanes at once (label check a register of
// int64 lanes at a time, the label's entry, hit, the probabilities' check in T's lanes); a
// block's uniform bins are found in vector lanes (up to 15 bins their edges by permutes), its
// totals added in eight fixed lanes (row r0 + 8q + l in lane l on every target), and −log p_y is
// taken only when its sum is asked for (`nll`).
//
// Grouped, a task keeps each (group, bin) of the top-label sums as one cache line (its fields
// side by side, with the bin's Σ −log p_y and Σ Brier), so that a row of a random group touches
// one line of them, not one per field; the group's rows, hits, Σ −log p_y and Σ Brier are then
// its cells', added bin by bin at the end (the counts and hits integers: the same sums; the
// other two the same terms summed in another order, within float64 rounding).
// The rows are cut in `tasks` equal ranges (chosen by the caller from the shape only); each task
// sums into its own scratch, and the scratches are added to the outputs in task order: the
// result never depends on the threads.
#include <atomic>
#include <cstring>

#include "rowstats.hpp"

namespace lk {
namespace LK_TARGET {
namespace {

constexpr int64_t kRowBlock = 64;
constexpr int64_t kCell = 8;  // doubles per (group, bin) cell of a grouped pass: one cache line
constexpr int64_t kNllField = 5, kBrierField = 6;  // a cell's Σ −log p_y and Σ Brier (after the 5 bin sums)
constexpr int64_t kCellRows = 4;  // rows a cell for a grouped range to use the cells

// SplitMix64's finaliser of i mod G (the row groups of calibration/_engine.py), with the modulo
// by a multiplication (Lemire, Kaser & Kurz 2019: exact for every 64-bit i with a 128-bit
// constant), a division costing as much as the rest of a short row.
struct Groups {
    uint64_t g;
    unsigned __int128 m;
    explicit Groups(int64_t groups)
        : g(static_cast<uint64_t>(groups)),
          m(groups > 1 ? ~static_cast<unsigned __int128>(0) / static_cast<uint64_t>(groups) + 1 : 0) {}
    LK_INLINE int64_t of(uint64_t i) const {
        if (i < g) return static_cast<int64_t>(i);
        uint64_t z = i + 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z ^= z >> 31;
        if ((g & (g - 1)) == 0) return static_cast<int64_t>(z & (g - 1));  // the usual 1024 groups
        unsigned __int128 low = m * z;
        unsigned __int128 bottom = (static_cast<unsigned __int128>(static_cast<uint64_t>(low)) * g) >> 64;
        unsigned __int128 top = (low >> 64) * g;
        return static_cast<int64_t>((bottom + top) >> 64);
    }
    // The groups of rows i0, i0 + 1, ..., i0 + n − 1 into out: for the usual power-of-two G,
    // SplitMix in 64-bit vector lanes (a scalar row's two 64-bit multiplies and shifts cost as
    // much as the rest of its bookkeeping); the same integers.
    LK_INLINE void fill(uint64_t i0, int64_t n, int64_t* out) const {
        using U = VI<double>;  // 64-bit lanes
        typedef uint64_t V __attribute__((vector_size(sizeof(U))));
        constexpr int L = kL<double>;
        int64_t j = 0;
        if ((g & (g - 1)) == 0 && i0 >= g) {
            V at;
            for (int l = 0; l < L; ++l) at[l] = i0 + static_cast<uint64_t>(l);
            for (; j + L <= n; j += L, at += static_cast<uint64_t>(L)) {
                V z = at + 0x9E3779B97F4A7C15ULL;
                z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
                z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
                z ^= z >> 31;
                z &= g - 1;
                std::memcpy(out + j, &z, sizeof z);
            }
        }
        for (; j < n; ++j) out[j] = of(i0 + static_cast<uint64_t>(j));
    }
};

template <class T> LK_INLINE VI<T> iota() {
    VI<T> v;
    for (int l = 0; l < kL<T>; ++l) v[l] = l;
    return v;
}

// Horizontal reductions: simd.hpp's fixed tree (lane i with lane i + n/2, down to one lane), with
// the max and min that keep the low half on a tie or a NaN in the high half.
struct MaxOp {
    template <class V> static LK_INLINE V of(V lo, V hi) { return lo > hi ? lo : hi; }
};
struct MinOp {
    template <class V> static LK_INLINE V of(V lo, V hi) { return lo < hi ? lo : hi; }
};
template <class T> LK_INLINE T vec_max(VF<T> v) { return tree<MaxOp, T, sizeof(VF<T>)>(v); }
template <class T> LK_INLINE T vec_min(VF<T> v) { return tree<MinOp, T, sizeof(VF<T>)>(v); }
// The first index of the max m: each lane kept its first occurrence, the smallest such index.
template <class T> LK_INLINE int64_t first_arg(VF<T> mx, VI<T> at, T m) {
    using Int = typename Lanes<T>::Int;
    VI<T> cand = mx == m ? at : (VI<T>{} + static_cast<Int>(INT32_MAX));
    return static_cast<int64_t>(tree<MinOp, Int, sizeof(VI<T>)>(cand));
}

// Below these, exp(d) is flushed to 0 and a probability's square to 0: the results stay in the
// normal range, as a subnormal result costs a microcode assist (100+ cycles per vector on x86)
// that the tails' −inf padding and a sharp row's far entries would pay on every row.  What is
// dropped is below 2^−62 (float) or 2^−510 (double) of a sum that is at least 1 (Σ e holds the
// max's 1; Σ p² ≥ 1/K² sums to 1 for valid rows): far below the sums' rounding.
template <class T> constexpr T kExpFlush = sizeof(T) == 4 ? T(-43.0) : T(-354.0);
template <class T> constexpr T kSquareFlush = sizeof(T) == 4 ? T(1.0842021724855044e-19) : T(1.4916681462400413e-154);

template <class T> LK_INLINE VF<T> exp_flushed(VF<T> d) {
    const VI<T> low = d < kExpFlush<T>;  // false for NaN, which propagates
    const VF<T> e = vexp<T>(low ? splat<T>(0) : d);
    return low ? splat<T>(0) : e;
}

// One vector of a row into its running max (NaN never wins) and, with TOP, each lane's index of
// its first max (idx: the vector's indices, advanced here).
template <class T, bool TOP> LK_INLINE void track_max(VF<T> v, VF<T>& mx, VI<T>& at, VI<T>& idx) {
    if (TOP) {
        const VI<T> gt = v > mx;
        mx = gt ? v : mx;
        at = gt ? idx : at;
        idx += kL<T>;
    } else {
        mx = vmax<T>(v, mx);
    }
}

struct ProbRow {
    double max, min, sum, sumsq;
    int64_t arg;
};

// One read of a row of probabilities: max (and first arg-max with TOP), min, Σ p and Σ p² (a
// NaN makes the sums NaN), summed in T's lanes over blocks of kSumBlock entries and in double
// across them.
template <class T, bool TOP>
LK_INLINE ProbRow scan_probs(const T* x, int64_t k) {
    constexpr int L = kL<T>;
    VF<T> mx = splat<T>(-inf<T>()), lo = splat<T>(inf<T>());
    VI<T> at = VI<T>{}, idx = iota<T>();
    double s = 0, q = 0;
    for (int64_t b0 = 0; b0 < k; b0 += kSumBlock) {
        const int64_t b1 = b0 + kSumBlock < k ? b0 + kSumBlock : k;
        VF<T> sv = splat<T>(0), qv = splat<T>(0);
        for (int64_t j = b0; j < b1; j += L) {
            const int64_t r = b1 - j;
            VF<T> v = r >= L ? load<T>(x + j) : load_part<T>(x + j, r, T(0));
            track_max<T, TOP>(v, mx, at, idx);
            lo = v < lo ? v : lo;
            sv += v;
            const VF<T> w = v < kSquareFlush<T> ? splat<T>(0) : v;  // a NaN stays
            qv += w * w;
        }
        s += hsum_wide(sv);
        q += hsum_wide(qv);
    }
    ProbRow out;
    T m = vec_max<T>(mx);
    out.max = m;
    out.arg = TOP ? first_arg<T>(mx, at, m) : 0;
    out.min = vec_min<T>(lo);
    out.sum = s;
    out.sumsq = q;
    return out;
}

// The max of a row of logits (NaN ignored) and, with TOP, its first arg-max.
template <class T, bool TOP>
LK_INLINE T max_arg(const T* x, int64_t k, int64_t& arg) {
    constexpr int L = kL<T>;
    VF<T> mx = splat<T>(-inf<T>());
    VI<T> at = VI<T>{}, idx = iota<T>();
    for (int64_t j = 0; j < k; j += L) {
        const int64_t r = k - j;
        VF<T> v = r >= L ? load<T>(x + j) : load_part<T>(x + j, r, -inf<T>());
        track_max<T, TOP>(v, mx, at, idx);
    }
    T m = vec_max<T>(mx);
    arg = TOP ? first_arg<T>(mx, at, m) : 0;
    return m;
}

// Σ e over the entries below the max (rest), the entries at the max (top, each e = 1) and Σ e²,
// e = exp(β(x − m)) in T's lanes over blocks of kSumBlock entries, in double across blocks; with
// STORE the e go to out (the class-wise bins read them back from cache).
template <class T, bool STORE>
LK_INLINE void exp_sums(const T* x, int64_t k, T m, T beta, bool scale, T* out, double& rest, double& top,
                        double& sq) {
    constexpr int L = kL<T>;
    const VF<T> vm = splat<T>(m), vb = splat<T>(beta);
    rest = 0;
    top = 0;
    sq = 0;
    for (int64_t b0 = 0; b0 < k; b0 += kSumBlock) {
        const int64_t b1 = b0 + kSumBlock < k ? b0 + kSumBlock : k;
        VF<T> acc = splat<T>(0), cnt = splat<T>(0), q = splat<T>(0);
        for (int64_t j = b0; j < b1; j += L) {
            const int64_t r = b1 - j;
            VF<T> v = r >= L ? load<T>(x + j) : load_part<T>(x + j, r, -inf<T>());
            VF<T> d = v - vm;
            if (scale) d = d * vb;
            VF<T> e = exp_flushed<T>(d);
            if (STORE) {
                if (r >= L) store<T>(out + j, e); else store_part<T>(out + j, e, r);
            }
            VI<T> at_top = d == T(0);
            acc += at_top ? splat<T>(0) : e;  // arithmetic, not a branch: a NaN stays in acc
            cnt += at_top ? splat<T>(1) : splat<T>(0);
            q += e * e;
        }
        rest += hsum_wide(acc);
        top += hsum_wide(cnt);
        sq += hsum_wide(q);
    }
}

// exp(d) lane-wise over d[0, n) (d ≤ 0), into out.
LK_INLINE void block_exp(const double* d, double* out, int64_t n) {
    constexpr int L = kL<double>;
    for (int64_t i = 0; i < n; i += L) {
        const int64_t r = n - i;
        VF<double> v = r >= L ? load<double>(d + i) : load_part<double>(d + i, r, 0.0);
        VF<double> e = vexp<double>(v);
        if (r >= L) store<double>(out + i, e); else store_part<double>(out + i, e, r);
    }
}

// log(p) lane-wise over p[0, n) (0 ≤ p ≤ 1), into out: log 0 = −inf, subnormals by libm.
LK_INLINE void block_log(const double* p, double* out, int64_t n) {
    constexpr int L = kL<double>;
    for (int64_t i = 0; i < n; i += L) {
        const int64_t r = n - i;
        VF<double> v = r >= L ? load<double>(p + i) : load_part<double>(p + i, r, 1.0);
        VF<double> l = vlog(v);
        if (r >= L) store<double>(out + i, l); else store_part<double>(out + i, l, r);
    }
    for (int64_t i = 0; i < n; ++i)
        if (!(p[i] >= 2.2250738585072014e-308)) out[i] = p[i] == 0 ? -inf<double>() : std::log(p[i]);
}

// The right-closed bin of v among nb bins with edges e[0], e[s], ..., e[nb·s] (e[0] = 0, e[nb·s] = 1):
// the number of inner edges strictly below v (NumPy's searchsorted(inner, v, side="left")).
LK_INLINE int64_t search_bin(const double* e, int64_t s, int64_t nb, double v) {
    // Branch-free (the halving depends on nb only, the step is a conditional move): a search
    // whose branches follow the data mispredicts about once per row.
    const double* inner = e + s;
    const double* base = inner;
    int64_t n = nb - 1;
    while (n > 1) {
        const int64_t half = n >> 1;
        base = base[half * s] < v ? base + half * s : base;
        n -= half;
    }
    return (base - inner) / s + (n == 1 && base[0] < v ? 1 : 0);
}

// The same for uniform edges e[b] = b/B (correctly rounded), v in [0, 1]: ceil(v·B) − 1, moved
// by one bin where the product rounded across an edge (_engine.top_bins).
LK_INLINE int64_t uniform_bin(const double* e, int64_t nb, double v) {
    int64_t b = static_cast<int64_t>(std::ceil(v * static_cast<double>(nb))) - 1;
    b = b < 0 ? 0 : (b > nb - 1 ? nb - 1 : b);
    if (b > 0 && v <= e[b]) --b;
    else if (b < nb - 1 && v > e[b + 1]) ++b;
    return b;
}

LK_INLINE int64_t cw_bin(const CalibProblem& P, double v, int64_t c) {
    if (P.cw_per_class) return search_bin(P.cw_edges + c, P.k, P.cw_bins, v);
    if (P.cw_uniform) return uniform_bin(P.cw_edges, P.cw_bins, v);
    return search_bin(P.cw_edges, 1, P.cw_bins, v);
}

// The class-wise sums of one row: p_c = e_c·scale in T (as the reference computes them), or
// p_c = e_c when not scaled.
template <class T>
void classwise_row(const CalibProblem& P, const T* e, T scale, bool scaled, int64_t y, double* cw) {
    const int64_t k = P.k, cb = P.cw_bins, plane = k * cb;
    for (int64_t c = 0; c < k; ++c) {
        const double v = static_cast<double>(scaled ? static_cast<T>(e[c] * scale) : e[c]);
        double* cell = cw + c * cb + cw_bin(P, v, c);
        cell[0] += 1.0;
        cell[plane] += v;
        cell[3 * plane] += v * v;
    }
    const double v = static_cast<double>(scaled ? static_cast<T>(e[y] * scale) : e[y]);
    double* cell = cw + y * cb + cw_bin(P, v, y);
    cell[2 * plane] += 1.0;
    cell[4 * plane] += v;
}

// The per-row results of a block of rows, before their logs and bins.
struct BlockRows {
    double conf[kRowBlock], py[kRowBlock], a[kRowBlock], sum[kRowBlock], sq[kRowBlock];
    double hit[kRowBlock];  // [arg-max = label] (with TOP)
    bool ok[kRowBlock];
};

// A row of probabilities into slot j (max m, min lo, Σ p, Σ p², its hit, the label's p): false
// when the pass does not accept it.
LK_INLINE bool put_prob_row(const CalibProblem& P, BlockRows& br, int64_t j, double m, double lo, double total,
                            double sumsq, double hit, double p_y) {
    if (!(lo >= 0 && m <= 1 && std::fabs(total - 1.0) <= P.tol)) return false;
    br.ok[j] = true;
    br.conf[j] = m;
    br.hit[j] = hit;
    br.py[j] = p_y;
    br.sq[j] = sumsq;
    return true;
}

// A row of logits (row i, slot j: its max m and hit, the label's logit, Σ e split into rest
// and top, Σ e²): false, and the row flagged for the caller, when m is not finite or a sum is
// NaN.
LK_INLINE bool put_logit_row(const CalibProblem& P, BlockRows& br, int64_t i, int64_t j, double m, double hit,
                             double x_y, double rest, double top, double q, int64_t& n_flagged) {
    if (!(m > -inf<double>() && m < inf<double>()) || rest != rest || q != q) {
        P.flagged[i] = 1;
        ++n_flagged;
        br.ok[j] = false;
        br.a[j] = 0;
        br.py[j] = 0;
        br.sum[j] = 1;
        br.sq[j] = 0;
        br.hit[j] = 0;
        return false;
    }
    br.ok[j] = true;
    br.hit[j] = hit;
    br.sum[j] = rest + top;
    br.a[j] = rest + (top - 1.0);
    br.py[j] = P.beta * (x_y - m);  // β(x_y − max)
    br.sq[j] = q;
    return true;
}

// Short rows (K ≤ kLanesMaxK, no class-wise bins) run one row per lane: a row's horizontal
// reductions (max, arg-max, three sums) cost as much as the rest of a short row, a column of L
// rows gathered from L1 costs one instruction.  Sums in T's lanes over the K ≤ 32 terms of a
// row (within 32u of the exact sum, inside ROW_SUM_MARGIN for the probabilities' check).
constexpr int64_t kLanesMaxK = 32;

template <class T> LK_INLINE VF<T> gather(const T* base, VI<T> idx) {
#if defined(__AVX512F__)
    if constexpr (sizeof(T) == 4) {
        __m512 r = _mm512_i32gather_ps(reinterpret_cast<__m512i&>(idx), base, 4);
        return reinterpret_cast<VF<T>&>(r);
    } else {
        __m512d r = _mm512_i64gather_pd(reinterpret_cast<__m512i&>(idx), base, 8);
        return reinterpret_cast<VF<T>&>(r);
    }
#elif defined(__AVX2__)
    if constexpr (sizeof(T) == 4) {
        __m256 r = _mm256_i32gather_ps(base, reinterpret_cast<__m256i&>(idx), 4);
        return reinterpret_cast<VF<T>&>(r);
    } else {
        __m256d r = _mm256_i64gather_pd(base, reinterpret_cast<__m256i&>(idx), 8);
        return reinterpret_cast<VF<T>&>(r);
    }
#else
    VF<T> v;
    for (int l = 0; l < kL<T>; ++l) v[l] = base[idx[l]];
    return v;
#endif
}

// Whether any lane of a mask (−1 / 0 lanes, one register) is set: one test instruction.
template <class T> LK_INLINE bool any_lane(VI<T> m) {
#if defined(__AVX512F__)
    const __m512i v = reinterpret_cast<__m512i&>(m);
    return _mm512_test_epi32_mask(v, v) != 0;
#elif defined(__AVX2__)
    const __m256i v = reinterpret_cast<__m256i&>(m);
    return !_mm256_testz_si256(v, v);
#else
    const __m128i v = reinterpret_cast<__m128i&>(m);
    return _mm_movemask_epi8(v) != 0;
#endif
}
// The labels of L = kL<T> rows as T's integer lanes, read and checked a register of int64 lanes
// at a time (two for float rows) and narrowed by one conversion each: the same check on one
// 2L-wide int64 vector was split by the compiler into scalar compares and inserts, a sixth of a
// short row's time.  false: a label outside [0, k) (the caller then says which).
template <class T> LK_INLINE bool lane_labels(const int64_t* p, int64_t k, VI<T>& out) {
    using Q = VI<double>;  // int64 lanes, one register
    typedef uint64_t U __attribute__((vector_size(sizeof(Q))));
    typedef typename Lanes<T>::Int N __attribute__((vector_size(kL<double> * sizeof(typename Lanes<T>::Int))));
    constexpr int parts = kL<T> / kL<double>;
    Q bad = Q{};
    for (int h = 0; h < parts; ++h) {
        Q q;
        std::memcpy(&q, p + h * kL<double>, sizeof q);
        bad |= reinterpret_cast<U&>(q) >= static_cast<uint64_t>(k);  // a negative label is huge unsigned
        const N n = __builtin_convertvector(q, N);
        std::memcpy(reinterpret_cast<char*>(&out) + h * sizeof n, &n, sizeof n);
    }
    return !any_lane<double>(bad);
}
template <class V> LK_INLINE void store_lanes(double* p, V v) { std::memcpy(p, &v, sizeof v); }
// The largest T not above v (v ≥ 0): a T compares ≤ v exactly where it compares ≤ this.
template <class T> LK_INLINE T at_most(double v) {
    T t = static_cast<T>(v);
    return static_cast<double>(t) > v ? std::nextafter(t, T(0)) : t;
}

// The per-row quantities of rows [i0, i0 + L), one per lane, into the block's arrays at j0:
// what the row loop of calib_range computes, with the label check, the label's entry (a
// gather), the hit and the probabilities' check done on all lanes at once.  false: a label
// out of range, or probabilities the pass does not accept.
template <class T, bool LOGITS, bool TOP>
LK_INLINE bool lanes_rows(const CalibProblem& P, int64_t i0, int64_t j0, const int64_t* labels, T beta, bool scale,
                          BlockRows& br, int64_t& n_flagged) {
    constexpr int L = kL<T>;
    using Int = typename Lanes<T>::Int;
    using W = Wide<T>;
    const int64_t k = P.k;
    const bool squares = P.brier != 0;  // Σ p² (Σ e²) only for the Brier score
    VI<T> y;
    if (!lane_labels<T>(labels, k, y)) return false;
    const T* x = static_cast<const T*>(P.x) + i0 * k;
    // The lines of the group kAhead groups on (within the rows' ends: a prefetch never faults,
    // but stays inside the array): the gathers then find them in L1.
    {
        constexpr int64_t kAhead = 4;
        const char* next = reinterpret_cast<const char*>(x + kAhead * L * k);
        const char* end = reinterpret_cast<const char*>(static_cast<const T*>(P.x) + P.n * k);
        const int64_t bytes = static_cast<int64_t>(L * k * sizeof(T));
        if (next + bytes <= end)
            for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(next + b);
    }
    const VI<T> row = iota<T>() * static_cast<Int>(k);
    VF<T> cols[kLanesMaxK];
    VF<T> mx = splat<T>(-inf<T>()), lo = splat<T>(inf<T>()), s = splat<T>(0), q = splat<T>(0);
    VI<T> at = VI<T>{};
    // Column c of the L rows, v, into their running max (NaN never wins: the max of the
    // others, as max_arg), first arg-max, and min, sums or kept columns; columns in order.
    auto take = [&](VF<T> v, int64_t c) __attribute__((always_inline)) {
        const VI<T> gt = v > mx;
        mx = gt ? v : mx;
        if (TOP) at = gt ? (VI<T>{} + static_cast<Int>(c)) : at;
        if (LOGITS) {
            cols[c] = v;
        } else {
            lo = v < lo ? v : lo;
            s += v;
            if (squares) {  // loop-invariant: the compiler unswitches it
                const VF<T> w = v < kSquareFlush<T> ? splat<T>(0) : v;
                q += w * w;
            }
        }
    };
    int64_t c = 0;
#if defined(__AVX512F__)
    if constexpr (sizeof(T) == 4) {
        // Columns two at a time: each row's pair (c, c + 1) as one 64-bit element, eight rows a
        // gather, split into the two columns by two permutes.  A gather's cost goes with its
        // elements, not their width: 1.4 against 2.5 ns a row of ten from L2 (one thread).
        const __m512i lo8 = _mm512_mullo_epi64(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7), _mm512_set1_epi64(k));
        const __m512i hi8 = _mm512_add_epi64(lo8, _mm512_set1_epi64(8 * k));
        const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
        for (; c + 1 < k; c += 2) {
            const __m512i at_c = _mm512_set1_epi64(c);
            const __m512 a = _mm512_castpd_ps(_mm512_i64gather_pd(_mm512_add_epi64(lo8, at_c), x, 4));
            const __m512 b = _mm512_castpd_ps(_mm512_i64gather_pd(_mm512_add_epi64(hi8, at_c), x, 4));
            const __m512 v0 = _mm512_permutex2var_ps(a, even, b), v1 = _mm512_permutex2var_ps(a, odd, b);
            take(reinterpret_cast<const VF<T>&>(v0), c);
            take(reinterpret_cast<const VF<T>&>(v1), c + 1);
        }
    }
#endif
    for (; c < k; ++c) take(gather<T>(x, row + static_cast<Int>(c)), c);  // (the last of an odd k)
    const VF<T> xy = gather<T>(x, row + y);
    const W m = widen<T>(mx);
    if (TOP) store_lanes(br.hit + j0, __builtin_convertvector(-(at == y), W));
    if (!LOGITS) {
        // |Σ p − 1| ≤ tol in T's lanes: s − 1 is exact for s in [1/2, 2] (Sterbenz), and outside
        // it |s − 1| ≥ 1/2 > tol either way; T's d ≤ tol exactly where d ≤ the largest T ≤ tol.
        const VF<T> d = s - T(1);
        const T tol = at_most<T>(P.tol);
        if (any_lane<T>(~((lo >= T(0)) & (mx <= T(1)) & (d <= tol) & (-d <= tol)))) return false;
        store_lanes(br.conf + j0, m);
        store_lanes(br.py + j0, widen<T>(xy));
        store_lanes(br.sq + j0, widen<T>(q));
        std::memset(br.ok + j0, 1, L);
        return true;
    }
    const VF<T> vb = splat<T>(beta);
    VF<T> rest = splat<T>(0), cnt = splat<T>(0);
    for (int64_t c = 0; c < k; ++c) {
        VF<T> d = cols[c] - mx;
        if (scale) d = d * vb;
        const VF<T> e = exp_flushed<T>(d);
        const VI<T> at_top = d == T(0);
        rest += at_top ? splat<T>(0) : e;
        cnt += at_top ? splat<T>(1) : splat<T>(0);
        if (squares) q += e * e;
    }
    const W r = widen<T>(rest), t = widen<T>(cnt), sq = widen<T>(q);
    if (!any_lane<T>(~((mx > -inf<T>()) & (mx < inf<T>()) & (rest == rest) & (q == q)))) {
        store_lanes(br.sum + j0, r + t);
        store_lanes(br.a + j0, r + (t - 1.0));
        store_lanes(br.py + j0, P.beta * (widen<T>(xy) - m));  // β(x_y − max)
        store_lanes(br.sq + j0, sq);
        std::memset(br.ok + j0, 1, L);
        return true;
    }
    double m_[L], r_[L], t_[L], q_[L], xy_[L];  // a row to flag: each lane on its own
    store_lanes(m_, m);
    store_lanes(r_, r);
    store_lanes(t_, t);
    store_lanes(q_, sq);
    store_lanes(xy_, widen<T>(xy));
    for (int l = 0; l < L; ++l)
        put_logit_row(P, br, i0 + l, j0 + l, m_[l], TOP ? br.hit[j0 + l] : 0.0, xy_[l], r_[l], t_[l], q_[l], n_flagged);
    return true;
}

// The uniform bins of v[0, n) (n ≤ kRowBlock, the arrays' length, rounded up to whole vectors
// with 0): uniform_bin lane-wise, ceil by the magic number 2^52 (exact below 2^51), the edges
// e[b], e[b + 1] looked up by `edge` (lanes of bins to lanes of edges).
template <class Edge> LK_INLINE void uniform_bins_by(const Edge& edge, int64_t nb, const double* v, int64_t* out,
                                                     int64_t n) {
    constexpr int L = kL<double>;
    using VD = VF<double>;
    using VL = VI<double>;
    const double top = static_cast<double>(nb - 1);
    for (int64_t i = 0; i < n; i += L) {
        const int64_t r = n - i;
        const VD x = r >= L ? load<double>(v + i) : load_part<double>(v + i, r, 0.0);
        const VD t = x * static_cast<double>(nb);
        const VD near = (t + 4503599627370496.0) - 4503599627370496.0;
        VD b = (near < t ? near + 1.0 : near) - 1.0;  // ceil(v·B) − 1
        b = b >= 0.0 ? b : splat<double>(0.0);        // NaN to 0, as the clamp of a cast
        b = b <= top ? b : splat<double>(top);
        VL bi = __builtin_convertvector(b, VL);
        const VL down = (bi > 0) & (x <= edge(bi));
        const VL up = ~down & (bi < nb - 1) & (x > edge(bi + 1));
        bi = bi + down - up;  // masks are −1
        std::memcpy(out + i, &bi, sizeof bi);
    }
}

LK_INLINE void uniform_bins(const double* e, int64_t nb, const double* v, int64_t* out, int64_t n) {
    using VD = VF<double>;
    using VL = VI<double>;
#if defined(__AVX512F__)
    if (nb <= 15) {
        // Up to 15 bins their 16 edges fit two registers: a permute looks them up, not a
        // gather of eight loads (the same values).
        const int64_t ne = nb + 1;
        const __m512d e0 = _mm512_maskz_loadu_pd(static_cast<__mmask8>(ne >= 8 ? 0xFF : (1u << ne) - 1), e);
        const __m512d e1 = _mm512_maskz_loadu_pd(static_cast<__mmask8>(ne > 8 ? (1u << (ne - 8)) - 1 : 0), e + 8);
        auto edge = [&](VL bi) __attribute__((always_inline)) {
            const __m512d r = _mm512_permutex2var_pd(e0, reinterpret_cast<const __m512i&>(bi), e1);
            return reinterpret_cast<const VD&>(r);
        };
        uniform_bins_by(edge, nb, v, out, n);
        return;
    }
#endif
    auto edge = [&](VL bi) __attribute__((always_inline)) { return gather<double>(e, bi); };
    uniform_bins_by(edge, nb, v, out, n);
}

// Rows [r0, r1) into the task's sums acc = [tot (G, 4) | bins (G, F, B) | cw (G, 5, k, CB)].
template <class T, bool LOGITS, bool TOP, bool GROUPED>
void calib_range(const CalibProblem& P, int64_t r0, int64_t r1, double* acc, T* ebuf, double* copies,
                 int64_t& n_flagged, std::atomic<int>& stop) {
    const int64_t k = P.k, nb = P.n_bins, fields = P.moments ? 5 : 3;
    const T* x = static_cast<const T*>(P.x);
    const Groups groups(P.groups);
    double* tot = acc;
    double* bins = acc + 4 * P.groups;
    double* cw = bins + P.groups * fields * nb;
    const int64_t cw_group = 5 * k * P.cw_bins;
    const bool classwise = P.cw_bins > 0;
    const T beta = static_cast<T>(P.beta);
    const bool scale = P.beta != 1.0;
    const bool lanes = k <= kLanesMaxK && !classwise;
    // P's fields in locals: the sums' stores (doubles) could alias P's, so the compiler would
    // read them again for every row.
    const double* edges = P.edges;
    const bool uniform = P.uniform != 0, do_brier = P.brier != 0, do_nll = P.nll != 0;
    double* row_conf = P.conf;
    double* row_hit = P.hit;
    BlockRows br;
    double* const conf = br.conf;
    double* const py = br.py;
    double* const a = br.a;
    double* const sum = br.sum;
    double* const sq = br.sq;
    double* const hits = br.hit;
    const bool* const ok = br.ok;
    double lg[kRowBlock];
    int64_t grp[kRowBlock] = {};  // group 0 throughout when ungrouped
    int64_t lab_buf[kRowBlock];
    // The totals of an ungrouped pass: row r0 + 8q + l into lane l (the same on every target),
    // the lanes added by simd.hpp's tree at the end.
    typedef double D8 __attribute__((vector_size(64)));
    D8 t_hit = D8{}, t_nll = D8{}, t_brier = D8{};
    int64_t t_n = 0;
    for (int64_t b0 = r0; b0 < r1; b0 += kRowBlock) {
        if (stop.load(std::memory_order_relaxed)) return;
        const int64_t b1 = b0 + kRowBlock < r1 ? b0 + kRowBlock : r1, nr = b1 - b0;
        const int64_t flagged_before = n_flagged;
        if (GROUPED) groups.fill(static_cast<uint64_t>(P.offset + b0), nr, grp);
        // The block's labels: int32 labels widened here, a block at a time.
        const int64_t* lab = P.labels + b0;
        if (P.labels32 != nullptr) {
            for (int64_t j = 0; j < nr; ++j) lab_buf[j] = P.labels32[b0 + j];
            lab = lab_buf;
        }
        int64_t first = b0;
        if (lanes) {
            constexpr int64_t L = kL<T>;
            for (; first + L <= b1; first += L) {
                if (!lanes_rows<T, LOGITS, TOP>(P, first, first - b0, lab + (first - b0), beta, scale, br,
                                                n_flagged)) {
                    stop.store(1, std::memory_order_relaxed);
                    return;
                }
            }
        }
        for (int64_t i = first; i < b1; ++i) {
            const int64_t j = i - b0, y = lab[j];
            const T* xi = x + i * k;
            if (y < 0 || y >= k) {  // the caller then says which label is out of range
                stop.store(1, std::memory_order_relaxed);
                return;
            }
            if (!LOGITS) {
                ProbRow r = scan_probs<T, TOP>(xi, k);
                if (!put_prob_row(P, br, j, r.max, r.min, r.sum, r.sumsq, static_cast<double>(r.arg == y),
                                  static_cast<double>(xi[y]))) {
                    stop.store(1, std::memory_order_relaxed);
                    return;
                }
                if (classwise) classwise_row<T>(P, xi, T(1), false, y, cw + grp[j] * cw_group);
            } else {
                int64_t arg = 0;
                const T m = max_arg<T, TOP>(xi, k, arg);
                double rest = 0, top = 0, q = 0;
                if (m > -inf<T>() && m < inf<T>()) {
                    if (classwise) exp_sums<T, true>(xi, k, m, beta, scale, ebuf, rest, top, q);
                    else exp_sums<T, false>(xi, k, m, beta, scale, nullptr, rest, top, q);
                }
                if (put_logit_row(P, br, i, j, m, static_cast<double>(arg == y), static_cast<double>(xi[y]), rest,
                                  top, q, n_flagged) && classwise)
                    classwise_row<T>(P, ebuf, static_cast<T>(1.0 / br.sum[j]), true, y, cw + grp[j] * cw_group);
            }
        }
        const bool all_ok = n_flagged == flagged_before;  // only rows of logits are ever left out
        // The block's logs (and exps) in one vectorised loop, each only where a sum needs it.
        double nll[kRowBlock], brier[kRowBlock];
        if (LOGITS) {
            if (do_nll || do_brier) {
                block_log1p(a, lg, nr);
                for (int64_t j = 0; j < nr; ++j) {
                    lg[j] = py[j] - lg[j];  // log p_y
                    nll[j] = -lg[j];
                }
            }
            for (int64_t j = 0; j < nr; ++j) conf[j] = 1.0 / sum[j];
            if (do_brier) {
                block_exp(lg, py, nr);  // p_y
                for (int64_t j = 0; j < nr; ++j) brier[j] = sq[j] * conf[j] * conf[j] - 2.0 * py[j] + 1.0;
            }
        } else {
            if (do_nll) {
                block_log(py, lg, nr);
                for (int64_t j = 0; j < nr; ++j) nll[j] = -lg[j];
            }
            if (do_brier)
                for (int64_t j = 0; j < nr; ++j) brier[j] = sq[j] - 2.0 * py[j] + 1.0;
        }
        // The block's bins, apart from the sums (no chain from one row's search to the next's sums).
        int64_t bidx[kRowBlock], cell_at[kRowBlock];
        if (nb > 0) {
            if (uniform) uniform_bins(edges, nb, conf, bidx, nr);
            else for (int64_t j = 0; j < nr; ++j) bidx[j] = search_bin(edges, 1, nb, conf[j]);
            if (GROUPED && copies != nullptr)  // the rows' cells (random groups, mostly in L2) on their way
                for (int64_t j = 0; j < nr; ++j) {
                    cell_at[j] = (grp[j] * nb + bidx[j]) * kCell;
                    __builtin_prefetch(copies + cell_at[j], 1);
                }
        }
        // The totals.
        if (GROUPED && copies != nullptr) {
            // Through the cells (below), a group's totals are its cells', added at the end.
        } else if (GROUPED) {
            for (int64_t j = 0; j < nr; ++j) {
                if (!all_ok && !ok[j]) continue;
                double* t = tot + 4 * grp[j];
                t[0] += 1.0;
                if (TOP) t[1] += hits[j];
                if (do_nll) t[2] += nll[j];
                if (do_brier) t[3] += brier[j];
            }
        } else {
            if (!all_ok) {  // rows left out add nothing (+0 changes no sum that starts at +0)
                for (int64_t j = 0; j < nr; ++j) {
                    if (ok[j]) continue;
                    hits[j] = 0;
                    nll[j] = 0;
                    brier[j] = 0;
                }
            }
            t_n += nr - (n_flagged - flagged_before);
            for (int64_t j = 0; j < nr; j += 8) {
                const int64_t r = nr - j;  // < 8 only in a task's last block
                D8 h = D8{}, l = D8{}, b = D8{};
                if (r >= 8) {
                    if (TOP) std::memcpy(&h, hits + j, sizeof h);
                    if (do_nll) std::memcpy(&l, nll + j, sizeof l);
                    if (do_brier) std::memcpy(&b, brier + j, sizeof b);
                } else {
                    for (int64_t q = 0; q < r; ++q) {
                        h[q] = TOP ? hits[j + q] : 0.0;
                        l[q] = do_nll ? nll[j + q] : 0.0;
                        b[q] = do_brier ? brier[j + q] : 0.0;
                    }
                }
                t_hit += h;
                t_nll += l;
                t_brier += b;
            }
        }
        if (nb > 0) {
            const bool five = fields == 5;
            // One row's additions to its bin: `cell` its count, the other fields fs apart.
            auto add = [&](double* cell, int64_t fs, int64_t j) __attribute__((always_inline)) {
                const double c = conf[j], hit = hits[j];
                cell[0] += 1.0;
                cell[fs] += c;
                cell[2 * fs] += hit;
                if (five) {
                    cell[3 * fs] += c * c;
                    cell[4 * fs] += c * hit;
                }
            };
            if (GROUPED && copies != nullptr) {
                // A group's bin is one cache line of `copies` (its fields side by side, kCell
                // apart, and the row's −log p_y and Brier term in the spare fields kNllField and
                // kBrierField): a row touches one line of the groups' sums, not one per field,
                // nor a second line for the group's totals (that second scattered
                // read-modify-write cost 9% of all five's time from logits, K = 10, one thread).
                for (int64_t j = 0; j < nr; ++j) {
                    if (!all_ok && !ok[j]) continue;
                    double* const cell = copies + cell_at[j];
                    add(cell, 1, j);
                    if (do_nll) cell[kNllField] += nll[j];
                    if (do_brier) cell[kBrierField] += brier[j];
                }
            } else if (GROUPED) {
                // A range too short to pay for the cells: the (G, F, B) sums directly (the same
                // additions in the same order as through the cells).
                for (int64_t j = 0; j < nr; ++j)
                    if (all_ok || ok[j]) add(bins + grp[j] * fields * nb + bidx[j], nb, j);
            } else {
                // Ungrouped, row i adds to copy i mod 4 of the bins: consecutive rows in one bin
                // are then four chains of additions, not one chain through memory.  Rows
                // b0 + j of j = 0, 1, 2, 3 mod 4 go to the copies c[0..3], four rows a step.
                const int64_t len = fields * nb;
                double* const c0 = copies + (b0 & 3) * len;
                double* const c1 = copies + ((b0 + 1) & 3) * len;
                double* const c2 = copies + ((b0 + 2) & 3) * len;
                double* const c3 = copies + ((b0 + 3) & 3) * len;
                int64_t j = 0;
                if (all_ok)
                    for (; j + 4 <= nr; j += 4) {
                        add(c0 + bidx[j], nb, j);
                        add(c1 + bidx[j + 1], nb, j + 1);
                        add(c2 + bidx[j + 2], nb, j + 2);
                        add(c3 + bidx[j + 3], nb, j + 3);
                    }
                for (; j < nr; ++j)
                    if (all_ok || ok[j]) add(copies + ((b0 + j) & 3) * len + bidx[j], nb, j);
            }
        }
        if (row_conf != nullptr) {  // rows left out are overwritten by the caller
            std::memcpy(row_conf + b0, conf, sizeof(double) * nr);
            std::memcpy(row_hit + b0, hits, sizeof(double) * nr);
        }
    }
    if (GROUPED) {  // the cells into the (G, F, B) layout of the sums, and into the totals, bin by bin
        if (copies != nullptr)
            for (int64_t g = 0; g < P.groups; ++g)
                for (int64_t b = 0; b < nb; ++b) {
                    const double* cell = copies + (g * nb + b) * kCell;
                    for (int64_t f = 0; f < fields; ++f) bins[(g * fields + f) * nb + b] += cell[f];
                    tot[4 * g] += cell[0];
                    tot[4 * g + 1] += cell[2];
                    tot[4 * g + 2] += cell[kNllField];
                    tot[4 * g + 3] += cell[kBrierField];
                }
    } else {
        const int64_t len = fields * nb;
        for (int64_t q = 0; q < len; ++q)
            bins[q] += (copies[q] + copies[len + q]) + (copies[2 * len + q] + copies[3 * len + q]);
        tot[0] += static_cast<double>(t_n);
        tot[1] += tree<AddLanes, double, sizeof(D8)>(t_hit);
        tot[2] += tree<AddLanes, double, sizeof(D8)>(t_nll);
        tot[3] += tree<AddLanes, double, sizeof(D8)>(t_brier);
    }
}

template <class T, bool LOGITS>
using RangeFn = void (*)(const CalibProblem&, int64_t, int64_t, double*, T*, double*, int64_t&, std::atomic<int>&);

template <class T, bool LOGITS> RangeFn<T, LOGITS> pick(bool top, bool grouped) {
    if (top) return grouped ? calib_range<T, LOGITS, true, true> : calib_range<T, LOGITS, true, false>;
    return grouped ? calib_range<T, LOGITS, false, true> : calib_range<T, LOGITS, false, false>;
}

template <class T> void calib(CalibProblem& P) {
    P.n_flagged = 0;
    P.invalid = 0;
    if (P.n == 0 || P.k == 0 || P.tasks < 1) return;
    const int64_t tasks = P.tasks;
    std::atomic<int> stop{0};
    int64_t* flagged = static_cast<int64_t*>(alloc<int64_t>(tasks));
    for (int64_t t = 0; t < tasks; ++t) flagged[t] = 0;
    const bool need_buf = P.from_logits && P.cw_bins > 0;
    double per_entry = (P.from_logits ? 0.6 : 0.3) * (sizeof(T) == 8 ? 1.5 : 1.0) + (P.cw_bins > 0 ? 3.0 : 0.0);
    const double row_ns = per_entry * static_cast<double>(P.k) + 25.0;
    auto task = [&](int64_t t) {
        double* acc = P.scratch + t * P.acc_len;
        for (int64_t q = 0; q < P.acc_len; ++q) acc[q] = 0;
        const int64_t r0 = t * P.n / tasks, r1 = (t + 1) * P.n / tasks;
        T* ebuf = need_buf ? static_cast<T*>(alloc<T>(P.k)) : nullptr;
        // The bins' private copies: four of them ungrouped, line-aligned cells grouped, but only
        // for a range of at least kCellRows rows a cell: fewer rows pay more to zero and fold a
        // megabyte of cells (1024 groups × 15 bins) than their scattered adds lose.
        const int64_t cells = P.groups * P.n_bins;
        const bool grouped = P.groups > 1;
        const bool use_copies = !grouped || (cells > 0 && r1 - r0 >= kCellRows * cells);
        const int64_t n_copies = !use_copies ? 0 : grouped ? cells * kCell : 4 * (P.moments ? 5 : 3) * P.n_bins;
        double* raw = use_copies ? static_cast<double*>(alloc<double>(n_copies + kCell)) : nullptr;
        double* copies = use_copies ? reinterpret_cast<double*>((reinterpret_cast<uintptr_t>(raw) + 63) & ~uintptr_t(63))
                                    : nullptr;
        for (int64_t q = 0; q < n_copies; ++q) copies[q] = 0;
        if (P.from_logits) pick<T, true>(P.top != 0, P.groups > 1)(P, r0, r1, acc, ebuf, copies, flagged[t], stop);
        else pick<T, false>(P.top != 0, P.groups > 1)(P, r0, r1, acc, ebuf, copies, flagged[t], stop);
        std::free(raw);
        std::free(ebuf);
    };
    run_tasks(tasks, row_ns * static_cast<double>(P.n) / static_cast<double>(tasks), task);
    if (stop.load()) {
        P.invalid = 1;
        std::free(flagged);
        return;
    }
    // The tasks' sums, added in task order.
    const int64_t fields = P.moments ? 5 : 3;
    const int64_t n_tot = 4 * P.groups, n_bins = P.groups * fields * P.n_bins;
    const int64_t n_cw = P.groups * 5 * P.k * P.cw_bins;
    for (int64_t t = 0; t < tasks; ++t) {
        const double* acc = P.scratch + t * P.acc_len;
        for (int64_t q = 0; q < n_tot; ++q) P.tot[q] += acc[q];
        for (int64_t q = 0; q < n_bins; ++q) P.bins[q] += acc[n_tot + q];
        for (int64_t q = 0; q < n_cw; ++q) P.cw[q] += acc[n_tot + n_bins + q];
        P.n_flagged += flagged[t];
    }
    std::free(flagged);
}

}  // namespace

void register_calib(Ops& ops) {
    ops.calib[0] = calib<float>;
    ops.calib[1] = calib<double>;
}

}  // namespace LK_TARGET
}  // namespace lk
