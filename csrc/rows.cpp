// softmax, log_softmax and logsumexp: rows (the reduced axis last) and strided layouts.
//
// Rows run in blocks small enough to stay in cache (kBlockBytes of input, or one longer row):
// pass 1 per row (rowstats.hpp), the block's logs in one vectorised loop, then the write pass
// per row.  A few very long rows (fewer than kSplitRows rows of at least 2·kSegment entries) are
// cut in segments of kSegment entries whose (max, sum) are merged, so that one row still uses
// every thread.  Both cuts depend on the shape only: results never depend on the threads.
//
// A reduction over a middle axis runs on the (outer, K, inner) view, vectorised along the
// contiguous inner axis, a tile of columns at a time (max, then sum, then write), without
// moving any data.
#include "rowstats.hpp"

namespace lk {
namespace LK_TARGET {
namespace {

constexpr int64_t kSegment = 32768;  // a multiple of kChunk
constexpr int64_t kSplitRows = 8;

template <class T> double ns_per_entry(bool mask, bool cap) {
    double ns = sizeof(T) == 4 ? 0.35 : 0.6;
    return ns * (mask ? 1.5 : 1.0) * (cap ? 4.0 : 1.0);
}

template <class T, bool MASK>
Stats row_pass1(int mode, const T* src, const uint8_t* mask, int64_t k, T inv_t, T* out, double* cm) {
    switch (mode) {
        case SOFTMAX: return pass1<T, MASK, STORE_EXP>(src, mask, k, inv_t, out, cm);
        case LOG_SOFTMAX: return pass1<T, MASK, STORE_SHIFTED>(src, mask, k, inv_t, out, cm);
        default: return pass1<T, MASK, STORE_NONE>(src, mask, k, inv_t, out, cm);
    }
}

template <class T, bool MASK>
LK_INLINE Stats row_pass1_known(int mode, const T* src, const uint8_t* mask, int64_t k, T inv_t, T* out,
                                double* cm, double m) {
    switch (mode) {
        case SOFTMAX: return pass1_known<T, MASK, STORE_EXP>(src, mask, k, inv_t, out, cm, m);
        case LOG_SOFTMAX: return pass1_known<T, MASK, STORE_SHIFTED>(src, mask, k, inv_t, out, cm, m);
        default: return pass1_known<T, MASK, STORE_NONE>(src, mask, k, inv_t, out, cm, m);
    }
}

template <class T, bool MASK, bool CAP>
void rows_range(const RowsProblem& P, int64_t r0, int64_t r1, bool stream) {
    const int64_t k = P.k;
    const T* x = static_cast<const T*>(P.x);
    T* out = static_cast<T*>(P.out);
    const T inv_t = static_cast<T>(P.inv_t), cap = static_cast<T>(P.cap);
    int64_t nb = kBlockBytes / (k * static_cast<int64_t>(sizeof(T)));
    nb = nb < 1 ? 1 : (nb > kMaxBlockRows ? kMaxBlockRows : nb);
    const int64_t nchunks = (k + kChunk - 1) / kChunk;
    double* chunk_m = static_cast<double*>(alloc<double>(nb * nchunks));
    const bool one_chunk = k <= kChunk;
    // The softcapped rows of a logsumexp (a block of them for short rows, whose two loops read
    // them twice).
    T* capbuf = (CAP && P.mode == LSE) ? static_cast<T*>(alloc<T>(one_chunk ? nb * k : k)) : nullptr;
    // Streaming: pass 1 writes a scratch block that stays in cache, pass 2 streams it out.
    T* sbuf = stream ? static_cast<T*>(alloc<T>(nb * k)) : nullptr;
    double ms[kMaxBlockRows], sums[kMaxBlockRows], a[kMaxBlockRows], logs[kMaxBlockRows];
    bool sp[kMaxBlockRows];
    for (int64_t b0 = r0; b0 < r1; b0 += nb) {
        int64_t b1 = b0 + nb < r1 ? b0 + nb : r1;
        if (one_chunk) {  // every row's max first (pass1_known)
            for (int64_t i = b0; i < b1; ++i) {
                int64_t j = i - b0;
                const T* src = x + i * k;
                const uint8_t* mi = MASK ? P.mask + (P.mask_rows == 1 ? 0 : i) * k : nullptr;
                prefetch_row<T>(i + nb < r1 ? x + (i + nb) * k : nullptr, k);
                if (CAP) {
                    T* y = P.mode == LSE ? capbuf + j * k : (stream ? sbuf + j * k : out + i * k);
                    softcap_row<T, MASK>(src, mi, k, cap, y);
                    src = y;
                }
                ms[j] = chunk_max<T, MASK>(src, mi, k);
            }
        }
        for (int64_t i = b0; i < b1; ++i) {
            int64_t j = i - b0;
            const T* src = x + i * k;
            const uint8_t* mi = MASK ? P.mask + (P.mask_rows == 1 ? 0 : i) * k : nullptr;
            T* oi = P.mode == LSE ? nullptr : (stream ? sbuf + j * k : out + i * k);
            if (CAP) {
                T* y = P.mode == LSE ? capbuf + (one_chunk ? j * k : 0) : oi;
                if (!one_chunk) softcap_row<T, MASK>(src, mi, k, cap, y);
                src = y;
            }
            Stats s = one_chunk ? row_pass1_known<T, MASK>(P.mode, src, mi, k, inv_t, oi, chunk_m + j * nchunks, ms[j])
                                : row_pass1<T, MASK>(P.mode, src, mi, k, inv_t, oi, chunk_m + j * nchunks);
            if (!s.special && inv_t < T(1)) s.special = shift_overflows<T, MASK>(src, mi, k, s.m);
            sp[j] = s.special;
            ms[j] = s.m;
            sums[j] = s.rest + s.top;
            a[j] = s.special ? 0.0 : s.rest + (s.top - 1.0);
        }
        block_log1p(a, logs, b1 - b0);
        for (int64_t i = b0; i < b1; ++i) {
            int64_t j = i - b0;
            if (sp[j]) {
                P.special[i] = 1;
                continue;
            }
            P.lse[i] = ms[j] * P.inv_t + logs[j];
            if (P.mode != LSE && stream)
                pass2_stream<T>(sbuf + j * k, out + i * k, k, P.mode, ms[j], P.inv_t, sums[j], logs[j],
                                chunk_m + j * nchunks);
            else if (P.mode != LSE)
                pass2<T>(out + i * k, k, 0, nchunks, P.mode, ms[j], P.inv_t, sums[j], logs[j],
                         chunk_m + j * nchunks);
        }
    }
    if (stream) stream_fence();
    std::free(chunk_m);
    std::free(capbuf);
    std::free(sbuf);
}

// A few long rows: segments of kSegment entries, (max, sum) merged per row.
template <class T, bool MASK, bool CAP>
void rows_split(const RowsProblem& P) {
    const int64_t n = P.n, k = P.k;
    const int64_t nseg = (k + kSegment - 1) / kSegment, nchunks = (k + kChunk - 1) / kChunk;
    const int64_t tasks = n * nseg;
    Stats* st = static_cast<Stats*>(std::malloc(sizeof(Stats) * static_cast<size_t>(tasks)));
    double* chunk_m = static_cast<double*>(alloc<double>(n * nchunks));
    double* row = static_cast<double*>(alloc<double>(4 * n));  // m, sum, log_s, special
    const T* x = static_cast<const T*>(P.x);
    T* out = static_cast<T*>(P.out);
    const T inv_t = static_cast<T>(P.inv_t), cap = static_cast<T>(P.cap);
    const double ns = ns_per_entry<T>(MASK, CAP) * static_cast<double>(kSegment);
    auto phase1 = [&](int64_t t) {
        int64_t i = t / nseg, s = t % nseg;
        int64_t k0 = s * kSegment, len = k - k0 < kSegment ? k - k0 : kSegment;
        const T* src = x + i * k + k0;
        const uint8_t* mi = MASK ? P.mask + (P.mask_rows == 1 ? 0 : i) * k + k0 : nullptr;
        T* oi = P.mode == LSE ? nullptr : out + i * k + k0;
        T* buf = nullptr;
        if (CAP) {
            buf = P.mode == LSE ? static_cast<T*>(alloc<T>(len)) : oi;
            softcap_row<T, MASK>(src, mi, len, cap, buf);
            src = buf;
        }
        st[t] = row_pass1<T, MASK>(P.mode, src, mi, len, inv_t, oi, chunk_m + i * nchunks + s * (kSegment / kChunk));
        if (!st[t].special && inv_t < T(1)) st[t].special = shift_overflows<T, MASK>(src, mi, len, st[t].m);
        if (CAP && P.mode == LSE) std::free(buf);
    };
    run_tasks(tasks, ns, phase1);
    for (int64_t i = 0; i < n; ++i) {  // merge, in segment order
        const Stats* s = st + i * nseg;
        bool special = false;
        double m = -inf<double>();
        for (int64_t j = 0; j < nseg; ++j) {
            special = special || (s[j].special && s[j].m != -inf<double>()) || s[j].rest != s[j].rest;
            m = s[j].m > m ? s[j].m : m;
        }
        double rest = 0, top = 0;
        for (int64_t j = 0; j < nseg; ++j) {
            if (s[j].m == m) {
                rest += s[j].rest;
                top += s[j].top;
            } else if (s[j].m > -inf<double>()) {
                rest += (s[j].rest + s[j].top) * std::exp((s[j].m - m) * P.inv_t);
            }
        }
        special = special || !(m > -inf<double>() && m < inf<double>());
        row[4 * i] = m;
        row[4 * i + 1] = rest + top;
        row[4 * i + 2] = special ? 0.0 : std::log1p(rest + (top - 1.0));
        row[4 * i + 3] = special;
        if (special) {
            P.special[i] = 1;
        } else {
            P.lse[i] = m * P.inv_t + row[4 * i + 2];
        }
    }
    if (P.mode != LSE) {
        auto phase2 = [&](int64_t t) {
            int64_t i = t / nseg, s = t % nseg;
            if (row[4 * i + 3] != 0) return;
            int64_t c_first = s * (kSegment / kChunk);
            int64_t c_last = c_first + kSegment / kChunk < nchunks ? c_first + kSegment / kChunk : nchunks;
            pass2<T>(out + i * k, k, c_first, c_last, P.mode, row[4 * i], P.inv_t, row[4 * i + 1],
                     row[4 * i + 2], chunk_m + i * nchunks);
        };
        run_tasks(tasks, static_cast<double>(kSegment) * 0.1, phase2);
    }
    std::free(st);
    std::free(chunk_m);
    std::free(row);
}

template <class T, bool MASK, bool CAP>
void rows_kernel(const RowsProblem& P) {
    if (P.n == 0 || P.k == 0) return;
    if (P.n < kSplitRows && P.k >= 2 * kSegment) return rows_split<T, MASK, CAP>(P);
    const double row_ns = ns_per_entry<T>(MASK, CAP) * static_cast<double>(P.k) + 30.0;
    const int64_t tasks = task_count(P.n, row_ns);
    const bool stream = P.mode != LSE && streamed(P.n, P.k * static_cast<int64_t>(sizeof(T)));
    auto task = [&](int64_t t) { rows_range<T, MASK, CAP>(P, t * P.n / tasks, (t + 1) * P.n / tasks, stream); };
    run_tasks(tasks, row_ns * static_cast<double>(P.n) / static_cast<double>(tasks), task);
}

template <class T> void rows(const RowsProblem& P) {
    bool mask = P.mask != nullptr, cap = P.cap > 0;
    if (mask && cap) return rows_kernel<T, true, true>(P);
    if (mask) return rows_kernel<T, true, false>(P);
    if (cap) return rows_kernel<T, false, true>(P);
    return rows_kernel<T, false, false>(P);
}

// ------------------------------------------------------------------------------------------
// strided: the reduced axis in the middle of (outer, K, inner)
// ------------------------------------------------------------------------------------------

constexpr int kTileVectors = 4;
constexpr int64_t kStridedBlock = 64;  // k-steps summed in lanes before the compensated sum

template <class T, bool MASK>
LK_INLINE VF<T> strided_load(const T* p, const uint8_t* mp, int64_t r) {
    constexpr int L = kL<T>;
    VF<T> v = r >= L ? load<T>(p) : load_part<T>(p, r, -inf<T>());
    if (MASK) v = select<T>(r >= L ? load_mask<T>(mp) : load_mask_part<T>(mp, r), v, splat<T>(-inf<T>()));
    return v;
}

template <class T, bool MASK>
void strided_tile(const StridedProblem& P, int64_t o, int64_t j0, int64_t w) {
    constexpr int L = kL<T>;
    constexpr int W = kTileVectors * L;
    const int64_t k = P.k, inner = P.inner;
    const T* x = static_cast<const T*>(P.x) + o * k * inner + j0;
    const uint8_t* mk = MASK ? P.mask + o * k * inner + j0 : nullptr;
    T* out = P.out ? static_cast<T*>(P.out) + o * k * inner + j0 : nullptr;
    const T inv_t = static_cast<T>(P.inv_t);
    const int nv = static_cast<int>((w + L - 1) / L);
    VF<T> m[kTileVectors];
    for (int v = 0; v < nv; ++v) m[v] = splat<T>(-inf<T>());
    for (int64_t kk = 0; kk < k; ++kk)
        for (int v = 0; v < nv; ++v)
            m[v] = vmax<T>(strided_load<T, MASK>(x + kk * inner + v * L, MASK ? mk + kk * inner + v * L : nullptr, w - v * L), m[v]);
    // The max as stored for the exponent: +inf/−inf/NaN columns compute garbage, flagged below.
    double rest[W], comp[W], top[W];
    for (int j = 0; j < W; ++j) rest[j] = comp[j] = top[j] = 0;
    VF<T> mv[kTileVectors];
    for (int v = 0; v < nv; ++v) {
        T mm[L];
        store<T>(mm, m[v]);
        for (int l = 0; l < L; ++l) mm[l] = (mm[l] > -inf<T>() && mm[l] < inf<T>()) ? mm[l] : T(0);
        mv[v] = load<T>(mm);
    }
    const VF<T> vt = splat<T>(inv_t);
    for (int64_t b0 = 0; b0 < k; b0 += kStridedBlock) {
        int64_t b1 = b0 + kStridedBlock < k ? b0 + kStridedBlock : k;
        VF<T> acc[kTileVectors], cnt[kTileVectors];
        for (int v = 0; v < nv; ++v) acc[v] = cnt[v] = splat<T>(0);
        for (int64_t kk = b0; kk < b1; ++kk) {
            for (int v = 0; v < nv; ++v) {
                VF<T> d = (strided_load<T, MASK>(x + kk * inner + v * L, MASK ? mk + kk * inner + v * L : nullptr, w - v * L) - mv[v]) * vt;
                VF<T> e = vexp<T>(d);
                if (sizeof(T) == 4) {
                    acc[v] += e;
                } else {
                    VI<T> at_top = d == T(0);
                    acc[v] += at_top ? splat<T>(0) : e;
                    cnt[v] += at_top ? splat<T>(1) : splat<T>(0);
                }
            }
        }
        for (int v = 0; v < nv; ++v) {
            T a[L], c[L];
            store<T>(a, acc[v]);
            store<T>(c, cnt[v]);
            for (int l = 0; l < L; ++l) {
                neumaier(rest[v * L + l], comp[v * L + l], static_cast<double>(a[l]));
                top[v * L + l] += c[l];
            }
        }
    }
    T scale[W];
    for (int v = 0; v < nv; ++v) {
        T mm[L];
        store<T>(mm, m[v]);
        for (int l = 0; l < L && v * L + l < w; ++l) {
            int j = v * L + l;
            double mj = mm[l], r = rest[j] + comp[j], t = top[j];
            bool special = !(mj > -inf<double>() && mj < inf<double>()) || r != r;
            if (!special && inv_t < T(1) && mj > kShiftSafe<T>) {
                double lo = mj;
                for (int64_t kk = 0; kk < k; ++kk) {
                    double xv = x[kk * inner + j];
                    if ((!MASK || mk[kk * inner + j]) && xv < lo) lo = xv;
                }
                special = mj - lo > kMaxOf<T>;
            }
            int64_t col = o * inner + j0 + j;
            if (special) {
                P.special[col] = 1;
                scale[j] = T(0);
                continue;
            }
            if (sizeof(T) == 4) {  // float: the sum includes the max's 1
                t = 1.0;
                r -= 1.0;
            }
            double log_s = std::log1p(r + (t - 1.0));
            P.lse[col] = mj * P.inv_t + log_s;
            scale[j] = static_cast<T>(P.mode == SOFTMAX ? 1.0 / (r + t) : log_s);
        }
    }
    if (P.mode == LSE) return;
    VF<T> sv[kTileVectors];
    for (int v = 0; v < nv; ++v) sv[v] = load<T>(scale + v * L);
    for (int64_t kk = 0; kk < k; ++kk) {
        for (int v = 0; v < nv; ++v) {
            int64_t r = w - v * L;
            VF<T> d = (strided_load<T, MASK>(x + kk * inner + v * L, MASK ? mk + kk * inner + v * L : nullptr, r) - mv[v]) * vt;
            VF<T> y = P.mode == SOFTMAX ? vexp<T>(d) * sv[v] : d - sv[v];
            if (r >= L) store<T>(out + kk * inner + v * L, y); else store_part<T>(out + kk * inner + v * L, y, r);
        }
    }
}

template <class T, bool MASK>
void strided_kernel(const StridedProblem& P) {
    if (P.outer == 0 || P.k == 0 || P.inner == 0) return;
    constexpr int64_t W = kTileVectors * kL<T>;
    const int64_t tiles = (P.inner + W - 1) / W, items = P.outer * tiles;
    const double tile_ns = ns_per_entry<T>(MASK, false) * 2.0 * static_cast<double>(P.k * (P.inner < W ? P.inner : W));
    const int64_t tasks = task_count(items, tile_ns);
    auto task = [&](int64_t t) {
        for (int64_t it = t * items / tasks; it < (t + 1) * items / tasks; ++it) {
            int64_t o = it / tiles, j0 = (it % tiles) * W;
            strided_tile<T, MASK>(P, o, j0, P.inner - j0 < W ? P.inner - j0 : W);
        }
    };
    run_tasks(tasks, tile_ns * static_cast<double>(items) / static_cast<double>(tasks), task);
}

template <class T> void strided(const StridedProblem& P) {
    if (P.mask != nullptr) return strided_kernel<T, true>(P);
    return strided_kernel<T, false>(P);
}

}  // namespace

void register_rows(Ops& ops) {
    ops.rows[0] = rows<float>;
    ops.rows[1] = rows<double>;
    ops.strided[0] = strided<float>;
    ops.strided[1] = strided<double>;
}

}  // namespace LK_TARGET
}  // namespace lk
