// The fused cross-entropy with its gradient: loss and ∂loss/∂logits in one pass per row.
//
// Per row (class axis last, z = softcap(x)/T, masked classes excluded, W_c = w_c·y_c the weighted
// smoothed target): pass 1 is the online (max, sum) of rowstats.hpp; pass 2 writes, once,
// g_c = s·([coef·p_c − W_c]/T·softcap'(x_c) + λ·x_c) with coef = Σ_c W_c + 2·c_z·lse and s the
// reduction's factor, and accumulates the cross term Σ_c W_c·(z_c − max)/T of the loss
// Σ_c W_c·lse − Σ_c W_c·z_c + c_z·lse² + (λ/2)‖x‖².  The regulariser terms are formed only when
// asked for (0·inf would be NaN: the z-loss of an lse beyond 1.3e154 is never 0·lse²).
//
// Plain rows (integer labels, no option but the z-loss and the temperature) run as softmax rows:
// pass 1 stores the exponentials in the gradient row, the block's logs are taken in one loop,
// and pass 2 rescales them by coef·s/(T·S) and takes s/T off the label's entry.
//
// The gradient may overwrite the logits (out = x): every entry is read before it is written,
// and a row that the kernel leaves to the caller is found out before anything of it is written
// (a first read of the row: its max, min and NaNs), so a row is computed the same way whether
// or not its gradient overwrites it.  Rows that do not count (ignored label,
// every class masked) get a zero gradient and loss 0.  Rows flagged special (a NaN, a +inf,
// nothing finite, a label outside [0, K) or on a masked class, logits whose shifted or scaled
// values could overflow, a non-finite loss or coefficient) are left untouched for the caller.
#include "rowstats.hpp"

namespace lk {
namespace LK_TARGET {
namespace {

// Whether a row's shifted logits (x − max)/T may overflow: such rows go to the caller.
template <class T> LK_INLINE bool range_overflows(const Scan& s, double inv_t) {
    return !((s.max - s.min) * inv_t < 0.5 * kMaxOf<T>) && s.min > -inf<double>();
}

// z-loss terms beyond this |lse| could overflow: such rows go to the caller.
LK_INLINE bool zloss_unsafe(double cz, double lse) {
    return cz > 0 && !(std::fabs(lse) * (1.0 + 2.0 * cz) < 1e150);
}

template <class T> LK_INLINE double scale_of(const CeProblem& P, int64_t i) {
    int64_t at = P.n_scales == 1 ? 0 : i;
    return P.scales_like_x ? static_cast<double>(static_cast<const T*>(P.scales)[at])
                           : static_cast<const double*>(P.scales)[at];
}

// Whether a z-loss gradient's factor coef·s/T (coef = 1 + 2·c_z·lse, lse ≤ |max/T| + log K)
// may not fit T although the loss does (float32 [3e38, 0] at T = 1e-10: 6e54): the factor
// would round to inf and inf·p = NaN where p = 0, whose exact gradient is 0.  Such rows go to
// the caller, which zeroes the factor where p = 0.  Decided from the row's max alone, so the
// first read of an in-place row gives the same verdict.
template <class T> LK_INLINE bool zgrad_overflows(const CeProblem& P, int64_t i, double max_over_t, int64_t k) {
    if (!(P.cz > 0)) return false;
    const double coef = 1.0 + 2.0 * P.cz * (std::fabs(max_over_t) + std::log(static_cast<double>(k)) + 1.0);
    return !(coef * std::fabs(P.inv_t * scale_of<T>(P, i)) < 0.5 * kMaxOf<T>);
}

// A row's (loss, lse, coef); lse and coef only where the caller asked for them.
LK_INLINE void put_row(const CeProblem& P, int64_t i, double loss, double lse, double coef) {
    P.loss[i] = loss;
    if (P.lse != nullptr) P.lse[i] = lse;
    if (P.coef != nullptr) P.coef[i] = coef;
}

template <class T> void zero_row(T* o, int64_t k) {
    for (int64_t c = 0; c < k; ++c) o[c] = T(0);
}

// Integer labels and no option but the z-loss and the temperature.
template <class T, bool WRITE>
void plain_range(const CeProblem& P, int64_t r0, int64_t r1, bool stream) {
    const int64_t k = P.k;
    const T* x = static_cast<const T*>(P.x);
    T* out = static_cast<T*>(P.out);
    const bool in_place = WRITE && P.out == P.x;
    const T inv_t = static_cast<T>(P.inv_t);
    int64_t nb = kBlockBytes / (k * static_cast<int64_t>(sizeof(T)));
    nb = nb < 1 ? 1 : (nb > kMaxBlockRows ? kMaxBlockRows : nb);
    const int64_t nchunks = (k + kChunk - 1) / kChunk;
    double* chunk_m = static_cast<double*>(alloc<double>(nb * nchunks));
    // Streaming (a large gradient, not in place): the exponentials go to a scratch block that
    // stays in cache, and the gradient is streamed out from it.
    stream = stream && WRITE && !in_place;
    T* sbuf = stream ? static_cast<T*>(alloc<T>(nb * k)) : nullptr;
    double ms[kMaxBlockRows], sums[kMaxBlockRows], a[kMaxBlockRows], logs[kMaxBlockRows], xt[kMaxBlockRows];
    uint8_t state[kMaxBlockRows];  // 0 computed, 1 special, 2 not counted
    const bool one_chunk = k <= kChunk;
    for (int64_t b0 = r0; b0 < r1; b0 += nb) {
        int64_t b1 = b0 + nb < r1 ? b0 + nb : r1;
        if (one_chunk && !in_place)  // every row's max first (pass1_known in rowstats.hpp)
            for (int64_t i = b0; i < b1; ++i) {
                prefetch_row<T>(i + nb < r1 ? x + (i + nb) * k : nullptr, k);
                ms[i - b0] = chunk_max<T, false>(x + i * k, nullptr, k);
            }
        for (int64_t i = b0; i < b1; ++i) {
            int64_t j = i - b0;
            a[j] = 0;
            state[j] = 0;
            if (!P.counted[i]) {
                state[j] = 2;
                continue;
            }
            int64_t t = P.labels[i];
            const T* xi = x + i * k;
            if (t < 0 || t >= k) {
                state[j] = 1;
                continue;
            }
            xt[j] = xi[t];  // before the gradient may overwrite it
            if (in_place) {
                Scan s = scan_row<T, false>(xi, nullptr, k);
                if (s.nan || !(s.max > -inf<double>() && s.max < inf<double>()) || xt[j] == -inf<double>() ||
                    (inv_t < T(1) && s.max > kShiftSafe<T> && s.max - s.min > kMaxOf<T>) ||
                    zloss_unsafe(P.cz, s.max * P.inv_t) || zgrad_overflows<T>(P, i, s.max * P.inv_t, k)) {
                    state[j] = 1;
                    continue;
                }
            }
            T* oi = stream ? sbuf + j * k : out + i * k;
            double* cm = chunk_m + j * nchunks;
            Stats s = one_chunk && !in_place
                          ? (WRITE ? pass1_known<T, false, STORE_EXP>(xi, nullptr, k, inv_t, oi, cm, ms[j])
                                   : pass1_known<T, false, STORE_NONE>(xi, nullptr, k, inv_t, nullptr, cm, ms[j]))
                          : (WRITE ? pass1<T, false, STORE_EXP>(xi, nullptr, k, inv_t, oi, cm)
                                   : pass1<T, false, STORE_NONE>(xi, nullptr, k, inv_t, nullptr, cm));
            if (!s.special && inv_t < T(1)) s.special = shift_overflows<T, false>(xi, nullptr, k, s.m);
            // The same verdicts as the first read of an in-place row (one answer either way).
            s.special = s.special || xt[j] == -inf<double>() || zloss_unsafe(P.cz, s.m * P.inv_t) ||
                        (WRITE && zgrad_overflows<T>(P, i, s.m * P.inv_t, k));
            state[j] = s.special ? 1 : 0;
            ms[j] = s.m;
            sums[j] = s.rest + s.top;
            a[j] = s.special ? 0.0 : s.rest + (s.top - 1.0);
        }
        block_log1p(a, logs, b1 - b0);
        for (int64_t i = b0; i < b1; ++i) {
            int64_t j = i - b0;
            if (state[j] == 2) {
                if (WRITE) zero_row<T>(out + i * k, k);
                put_row(P, i, 0, 0, 0);
                continue;
            }
            if (state[j] == 1) {
                P.special[i] = 1;
                continue;
            }
            double lse = ms[j] * P.inv_t + logs[j];
            double coef = 1.0, loss = logs[j] - (xt[j] - ms[j]) * P.inv_t;
            if (P.cz > 0) {
                coef += 2.0 * P.cz * lse;
                loss += P.cz * lse * lse;
            }
            if (!(std::isfinite(loss) && std::isfinite(coef))) {
                P.special[i] = 1;
                continue;
            }
            put_row(P, i, loss, lse, coef);
            if (WRITE) {
                double gs = static_cast<double>(inv_t) * scale_of<T>(P, i);
                T* o = out + i * k;
                if (stream) {
                    pass2_stream<T>(sbuf + j * k, o, k, SOFTMAX, ms[j], P.inv_t, sums[j], 0.0,
                                    chunk_m + j * nchunks, coef * gs, P.labels[i], static_cast<T>(gs));
                } else {
                    pass2<T>(o, k, 0, nchunks, SOFTMAX, ms[j], P.inv_t, sums[j], 0.0, chunk_m + j * nchunks, coef * gs);
                    o[P.labels[i]] -= static_cast<T>(gs);  // (coef·p_t − 1)/T · s
                }
            }
        }
    }
    if (stream) stream_fence();
    std::free(chunk_m);
    std::free(sbuf);
}

// Every option: masks, class weights, label smoothing, logit_l2, softcap, probability targets.
template <class T, bool WRITE, bool MASK, bool PROB, bool CAP>
void options_range(const CeProblem& P, int64_t r0, int64_t r1) {
    constexpr int L = kL<T>;
    const int64_t k = P.k;
    const T* x = static_cast<const T*>(P.x);
    T* out = static_cast<T*>(P.out);
    const T* probs = static_cast<const T*>(P.probs);
    const T* weight = static_cast<const T*>(P.weight);
    const bool has_w = weight != nullptr, lam_on = P.lam > 0;
    const T inv_t = static_cast<T>(P.inv_t), cap = static_cast<T>(P.cap);
    const T cap_inv = CAP ? static_cast<T>(1.0 / P.cap) : T(0);
    T* ybuf = CAP ? static_cast<T*>(alloc<T>(k)) : nullptr;
    const double eps = P.eps;
    for (int64_t i = r0; i < r1; ++i) {
        const T* xi = x + i * k;
        T* o = WRITE ? out + i * k : nullptr;
        const uint8_t* mi = MASK ? P.mask + (P.mask_rows == 1 ? 0 : i) * k : nullptr;
        const T* qi = PROB ? probs + i * k : nullptr;
        if (!P.counted[i]) {
            if (WRITE) zero_row<T>(o, k);
            put_row(P, i, 0, 0, 0);
            continue;
        }
        int64_t t = PROB ? 0 : P.labels[i];
        if (t < 0 || t >= k) {
            P.special[i] = 1;
            continue;
        }
        const T* src = xi;
        if (CAP) {
            softcap_row<T, MASK>(xi, mi, k, cap, ybuf);
            src = ybuf;
        }
        Scan sc = scan_row<T, MASK>(src, mi, k);
        if (sc.nan || !(sc.max > -inf<double>() && sc.max < inf<double>()) || range_overflows<T>(sc, P.inv_t)) {
            P.special[i] = 1;
            continue;
        }
        if (lam_on) {
            // (λ/2)‖x‖² of logits beyond 1e150 (or infinite ones under a softcap) overflows.
            Scan sx = CAP ? scan_row<T, MASK>(xi, mi, k) : sc;
            if (!(std::fabs(sx.max) < 1e150 && std::fabs(sx.min) < 1e150) && sx.max > -inf<double>()) {
                P.special[i] = 1;
                continue;
            }
        }
        if (sc.min == -inf<double>()) {
            // A live −inf logit makes the loss infinite where it carries target weight (the
            // label, label smoothing, a positive target probability) or under logit_l2: the
            // caller defines those rows.
            bool infinite = lam_on || eps > 0 || (!PROB && src[t] == -inf<T>() && (!MASK || mi[t]));
            for (int64_t c = 0; PROB && !infinite && c < k; ++c)
                infinite = src[c] == -inf<T>() && qi[c] > T(0) && (!MASK || mi[c]);
            if (infinite) {
                P.special[i] = 1;
                continue;
            }
        }
        Stats s = pass1<T, MASK, STORE_NONE>(src, mi, k, inv_t, nullptr, nullptr);
        if (s.special) {
            P.special[i] = 1;
            continue;
        }
        const double m = s.m;
        const double log_s = std::log1p(s.rest + (s.top - 1.0));
        const double lse = m * P.inv_t + log_s;
        // Σ_c W_c, before the pass that needs it for the gradient's coefficient.
        double kv = static_cast<double>(k);
        if (MASK) {
            int64_t live = 0;
            for (int64_t c = 0; c < k; ++c) live += mi[c] != 0;
            kv = static_cast<double>(live);
        }
        const double share = eps / kv;
        const double wt = PROB ? 1.0 : (has_w ? static_cast<double>(weight[t]) : 1.0);
        double total;
        if (PROB) {
            total = 0;
            for (int64_t c = 0; c < k; ++c) {
                double live = MASK ? (mi[c] ? 1.0 : 0.0) : 1.0;
                double w = has_w ? static_cast<double>(weight[c]) : 1.0;
                total += w * ((1.0 - eps) * static_cast<double>(qi[c]) + share * live);
            }
        } else {
            double sw = kv;
            if (has_w && eps > 0) {
                sw = 0;
                for (int64_t c = 0; c < k; ++c)
                    sw += static_cast<double>(weight[c]) * (MASK ? (mi[c] ? 1.0 : 0.0) : 1.0);
            }
            total = eps > 0 ? (1.0 - eps) * wt + share * sw : wt;
        }
        const double coef = total + (P.cz > 0 ? 2.0 * P.cz * lse : 0.0);
        // The label's own term, −b_t·y_t, is added after the row loop (no data-dependent branch
        // there); its logit is read now, before the loop may overwrite it (out = x).
        const double b_t = PROB ? 0.0 : (1.0 - eps) * wt;
        const bool live_t = PROB || !MASK || mi[t];
        const double s_t = PROB ? 0.0 : static_cast<double>(src[t]);
        // (coef itself must fit T: the loop below forms coef·p in T, and inf·0 = NaN)
        if ((b_t > 0 && !live_t) || zloss_unsafe(P.cz, lse) || !std::isfinite(coef) ||
            (WRITE && !(std::fabs(coef) < kMaxOf<T>))) {
            P.special[i] = 1;  // an infinite loss (label on a masked class), or a z-loss overflow
            continue;
        }
        const double scale = scale_of<T>(P, i);
        const double inv_s = 1.0 / (s.rest + s.top);
        const VF<T> vm = splat<T>(static_cast<T>(m)), vt = splat<T>(inv_t), vis = splat<T>(static_cast<T>(inv_s));
        const VF<T> vkeep = splat<T>(static_cast<T>(1.0 - eps)), vshare = splat<T>(static_cast<T>(share));
        const VF<T> vcoef = splat<T>(static_cast<T>(coef)), vlam = splat<T>(static_cast<T>(P.lam));
        const VF<T> vscale = splat<T>(static_cast<T>(scale)), vcinv = splat<T>(cap_inv);
        const VF<T> zero = splat<T>(0), one = splat<T>(1), ninf = splat<T>(-inf<T>());
        double cross = 0, sq = 0, cross_c = 0, sq_c = 0;
        for (int64_t b0 = 0; b0 < k; b0 += kSumBlock) {
            int64_t b1 = b0 + kSumBlock < k ? b0 + kSumBlock : k;
            Wide<T> acc_cross = Wide<T>{}, acc_sq = Wide<T>{};
            for (int64_t c = b0; c < b1; c += L) {
                int64_t r = k - c;
                bool full = r >= L;
                VF<T> sv = full ? load<T>(src + c) : load_part<T>(src + c, r, T(0));
                VF<T> xv = CAP ? (full ? load<T>(xi + c) : load_part<T>(xi + c, r, T(0))) : sv;
                VI<T> live = VI<T>{} == 0;
                if (MASK) live = full ? load_mask<T>(mi + c) : load_mask_part<T>(mi + c, r);
                if (!full) {
                    T pad[kL<T>];
                    for (int l = 0; l < L; ++l) pad[l] = l < r ? T(0) : T(1);
                    live = live & (load<T>(pad) == T(0));
                }
                VF<T> d = (select<T>(live, sv, ninf) - vm) * vt;
                VF<T> p = vexp<T>(d) * vis;
                VF<T> liv = select<T>(live, one, zero);
                VF<T> wv = has_w ? (full ? load<T>(weight + c) : load_part<T>(weight + c, r, T(0))) : one;
                VF<T> qv = zero;
                if (PROB) qv = full ? load<T>(qi + c) : load_part<T>(qi + c, r, T(0));
                VF<T> wgt = wv * (vkeep * qv + vshare * liv);
                // In double: a product of a weight and a shifted logit may overflow in float.
                acc_cross += widen<T>(select<T>(wgt > T(0), wgt, zero)) * widen<T>(select<T>(wgt > T(0), d, zero));
                VF<T> xs = select<T>(live, xv, zero);
                if (lam_on) acc_sq += widen<T>(xs) * widen<T>(xs);
                if (WRITE) {
                    VF<T> g = vcoef * p - wgt;
                    if (CAP) {
                        VF<T> th = sv * vcinv;
                        g = g * vt * (one - th * th);
                    } else {
                        g = g * vt;
                    }
                    if (lam_on) g = g + vlam * xs;
                    g = select<T>(live, g * vscale, zero);
                    if (full) store<T>(o + c, g); else store_part<T>(o + c, g, r);
                }
            }
            neumaier(cross, cross_c, hsum_w<T>(acc_cross));
            if (lam_on) neumaier(sq, sq_c, hsum_w<T>(acc_sq));
        }
        cross += cross_c;
        sq += sq_c;
        if (b_t > 0) {
            cross += b_t * ((s_t - m) * P.inv_t);
            if (WRITE) {
                double th = CAP ? s_t / P.cap : 0.0;
                o[t] -= static_cast<T>(b_t * P.inv_t * (1.0 - th * th) * scale);
            }
        }
        double loss = total * log_s - cross;
        if (P.cz > 0) loss += P.cz * lse * lse;
        if (lam_on) loss += 0.5 * P.lam * sq;
        put_row(P, i, loss, lse, coef);
    }
    std::free(ybuf);
}

template <class T, bool WRITE>
void ce_kernel(const CeProblem& P) {
    if (P.n == 0 || P.k == 0) return;
    const bool mask = P.mask != nullptr, prob = P.probs != nullptr, cap = P.cap > 0;
    const bool plain = !(mask || prob || cap || P.weight != nullptr || P.eps > 0 || P.lam > 0);
    using Range = void (*)(const CeProblem&, int64_t, int64_t);
    Range range;
    if (plain) {
        range = [](const CeProblem& p, int64_t r0, int64_t r1) {
            plain_range<T, WRITE>(p, r0, r1, streamed(p.n, p.k * static_cast<int64_t>(sizeof(T))));
        };
    } else {
#define LK_CE_OPTIONS(M, Q, C) if (mask == M && prob == Q && cap == C) range = options_range<T, WRITE, M, Q, C>;
        range = nullptr;
        LK_CE_OPTIONS(false, false, false) LK_CE_OPTIONS(false, false, true)
        LK_CE_OPTIONS(false, true, false) LK_CE_OPTIONS(false, true, true)
        LK_CE_OPTIONS(true, false, false) LK_CE_OPTIONS(true, false, true)
        LK_CE_OPTIONS(true, true, false) LK_CE_OPTIONS(true, true, true)
#undef LK_CE_OPTIONS
    }
    double per_entry = (sizeof(T) == 4 ? 0.4 : 0.7) * (plain ? 1.0 : 3.0) * (cap ? 3.0 : 1.0);
    const double row_ns = per_entry * static_cast<double>(P.k) + 40.0;
    const int64_t tasks = task_count(P.n, row_ns);
    auto task = [&](int64_t t) { range(P, t * P.n / tasks, (t + 1) * P.n / tasks); };
    run_tasks(tasks, row_ns * static_cast<double>(P.n) / static_cast<double>(tasks), task);
}

template <class T> void ce(const CeProblem& P) {
    if (P.out != nullptr) return ce_kernel<T, true>(P);
    return ce_kernel<T, false>(P);
}

}  // namespace

void register_ce(Ops& ops) {
    ops.ce[0] = ce<float>;
    ops.ce[1] = ce<double>;
}

}  // namespace LK_TARGET
}  // namespace lk
