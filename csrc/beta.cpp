// Beta calibration's sums (calibration/_binary.py), one-vs-rest: for C calibrated classes and
// rows i with features u = log p_ic, v = −log(1 − p_ic) (row i of feat holds u_i0 … u_i,C−1
// then v_i0 … v_i,C−1), weights w_i and per-class coefficients (a_c, b_c, c_c):
//
//     s = a u + b v + c,   softplus(s) = max(s, 0) + log1p(e),   q = σ(s),   r = q (1 − q)
//
// with e = exp(−|s|) (one exponential gives all three: σ(s) = 1/(1 + e) for s ≥ 0, e/(1 + e)
// below, r = e/(1 + e)²).  Without sample weights the log of softplus is taken once per
// block of kRows rows and class, of the product of the rows' 1 + e ∈ (1, 2] (at most 2^256:
// no overflow; within kRows roundings, ~3e-14 of the block's sum), not once per entry.
// Per class, the ten sums over rows
//
//     Σw·softplus(s), Σw·q·u, Σw·q·v, Σw·q, Σw·r·u², Σw·r·u·v, Σw·r·v², Σw·r·u, Σw·r·v, Σw·r
//
// in float64 are the data term of the logistic loss, its gradient and Hessian in (a, b, c) but
// for the targets' terms, which the caller adds (they do not depend on the coefficients).  The
// classes of a row are the SIMD lanes, so the per-class sums need no horizontal reduction; the
// rows are summed in blocks of kRows whose partial sums are added in block order, so the
// result does not depend on the threads.  A NaN feature makes its class's sums NaN.
#include <cmath>

#include "rowstats.hpp"

namespace lk {
namespace LK_TARGET {
namespace {

constexpr int64_t kRows = 256;
constexpr int kSums = 10;

void beta_rows(const BetaProblem& P, const double* th, int64_t cp, int64_t r0, int64_t r1, double* acc,
               double* prod) {
    constexpr int L = kL<double>;
    const int64_t c = P.c;
    const bool weighted = P.weight != nullptr;
    for (int64_t j = 0; j < kSums * cp; ++j) acc[j] = 0.0;
    for (int64_t j = 0; j < cp; ++j) prod[j] = 1.0;
    for (int64_t i = r0; i < r1; ++i) {
        const double* fu = P.feat + i * 2 * c;
        const double* fv = fu + c;
        const VF<double> w = splat<double>(P.weight ? P.weight[i] : 1.0);
        for (int64_t j = 0; j < c; j += L) {
            const int64_t r = c - j;
            VF<double> u = r >= L ? load<double>(fu + j) : load_part<double>(fu + j, r, 0.0);
            VF<double> v = r >= L ? load<double>(fv + j) : load_part<double>(fv + j, r, 0.0);
            VF<double> s = load<double>(th + j) * u + load<double>(th + cp + j) * v + load<double>(th + 2 * cp + j);
            VF<double> e = vexp<double>(-vabs<double>(s));
            VF<double> u1 = 1.0 + e;
            VF<double> d = 1.0 / u1;
            VF<double> q = s >= 0.0 ? d : e * d;
            VF<double> qw = q * w;
            VF<double> rw = e * d * d * w;
            VF<double> ru = rw * u, rv = rw * v;
            double* a = acc + j;
            // softplus(s) = max(s, 0) + log(1 + e); unweighted, the logs are taken once per
            // block, of the product of the rows' 1 + e (see above)
            VF<double> sp = vmax<double>(s, splat<double>(0.0));
            if (weighted) {
                sp += vlog(u1) - ((u1 - 1.0) - e) * d;  // log1p(e), as vlog1p, its division shared
                store<double>(a, load<double>(a) + sp * w);
            } else {
                store<double>(a, load<double>(a) + sp);
                store<double>(prod + j, load<double>(prod + j) * u1);
            }
            store<double>(a + cp, load<double>(a + cp) + qw * u);
            store<double>(a + 2 * cp, load<double>(a + 2 * cp) + qw * v);
            store<double>(a + 3 * cp, load<double>(a + 3 * cp) + qw);
            store<double>(a + 4 * cp, load<double>(a + 4 * cp) + ru * u);
            store<double>(a + 5 * cp, load<double>(a + 5 * cp) + ru * v);
            store<double>(a + 6 * cp, load<double>(a + 6 * cp) + rv * v);
            store<double>(a + 7 * cp, load<double>(a + 7 * cp) + ru);
            store<double>(a + 8 * cp, load<double>(a + 8 * cp) + rv);
            store<double>(a + 9 * cp, load<double>(a + 9 * cp) + rw);
        }
    }
    if (!weighted)
        for (int64_t j = 0; j < cp; j += L) store<double>(acc + j, load<double>(acc + j) + vlog(load<double>(prod + j)));
}

void beta(BetaProblem& P) {
    constexpr int L = kL<double>;
    const int64_t c = P.c, cp = (c + L - 1) / L * L;  // classes padded to whole vectors
    for (int64_t j = 0; j < kSums * c; ++j) P.sums[j] = 0.0;
    if (P.n == 0 || c == 0) return;
    // the coefficients as three padded rows (a, b, c); padding lanes compute s = 0, unused
    double* th = static_cast<double*>(alloc<double>(3 * cp));
    for (int64_t m = 0; m < 3; ++m)
        for (int64_t j = 0; j < cp; ++j) th[m * cp + j] = j < c ? P.theta[m * c + j] : 0.0;
    const int64_t blocks = (P.n + kRows - 1) / kRows;
    double* part = static_cast<double*>(alloc<double>(blocks * kSums * cp));
    auto task = [&](int64_t b) {
        int64_t r0 = b * kRows, r1 = r0 + kRows < P.n ? r0 + kRows : P.n;
        double* prod = static_cast<double*>(alloc<double>(cp));
        beta_rows(P, th, cp, r0, r1, part + b * kSums * cp, prod);
        std::free(prod);
    };
    run_tasks(blocks, 1.5 * static_cast<double>(kRows * c), task);
    double* comp = static_cast<double*>(alloc<double>(kSums * c));
    for (int64_t j = 0; j < kSums * c; ++j) comp[j] = 0.0;
    for (int64_t b = 0; b < blocks; ++b)
        for (int64_t m = 0; m < kSums; ++m)
            for (int64_t j = 0; j < c; ++j) neumaier(P.sums[m * c + j], comp[m * c + j], part[(b * kSums + m) * cp + j]);
    for (int64_t j = 0; j < kSums * c; ++j) P.sums[j] += comp[j];
    std::free(comp);
    std::free(part);
    std::free(th);
}

// The features [max(log p, log ε) | −max(log(1 − p), log ε)] of rows of logits x (n, k),
// p = softmax(x): log p = x − m − log Σ e^{x − m}, and log(1 − p) = log1p(−p) where p < ½,
// log(−expm1(log p)) above (Mächler 2012; at most one entry of a row).  NaN stays NaN.
template <class T> void features(const BetaFeatures& P) {
    constexpr int L = kL<double>;
    const int64_t k = P.k;
    const T* x = static_cast<const T*>(P.x);
    const double floor = P.floor, half = -0.6931471805599453;  // log ½
    const int64_t tasks = (P.n + kRows - 1) / kRows;
    auto task = [&](int64_t b) {
        int64_t r0 = b * kRows, r1 = r0 + kRows < P.n ? r0 + kRows : P.n;
        for (int64_t i = r0; i < r1; ++i) {
            const T* xi = x + i * k;
            double* lo = P.out + i * 2 * k;
            double* hi = lo + k;
            VF<double> vm = splat<double>(-inf<double>());
            for (int64_t j = 0; j < k; j += L) {
                VF<double> v = load_f64<T>(xi + j, k - j, -inf<double>());
                vm = v > vm ? v : vm;
                vm = v != v ? v : vm;  // NaN wins
            }
            double m = hmax<double>(vm);
            for (int l = 0; l < L; ++l) m = vm[l] != vm[l] ? vm[l] : m;
            VF<double> vs = VF<double>{};
            const VF<double> sm = splat<double>(m);
            for (int64_t j = 0; j < k; j += L) vs += vexp<double>(load_f64<T>(xi + j, k - j, -inf<double>()) - sm);
            const VF<double> lse = splat<double>(m + std::log(hsum<double>(vs)));
            const VF<double> vf = splat<double>(floor);
            for (int64_t j = 0; j < k; j += L) {
                const int64_t r = k - j;
                VF<double> lp = load_f64<T>(xi + j, r, -inf<double>()) - lse;
                VF<double> q = vexp<double>(lp);
                VF<double> l1 = vlog1p(-q);
                VI<double> big = lp > half;
                VF<double> a = lp < floor ? vf : lp;
                VF<double> c = l1 < floor ? vf : l1;
                if (r >= L) { store<double>(lo + j, a); store<double>(hi + j, -c); }
                else { store_part<double>(lo + j, a, r); store_part<double>(hi + j, -c, r); }
                if (hmax<double>(lp) <= half) continue;  // every p ≤ ½ (or NaN): the usual case
                for (int l = 0; l < L && l < r; ++l) {
                    if (big[l]) {  // p > ½: log(1 − p) = log(−expm1(log p)), without cancellation
                        double v = std::log(-std::expm1(lp[l] < 0 ? lp[l] : 0.0));
                        hi[j + l] = -(v < floor ? floor : v);
                    }
                }
            }
        }
    };
    run_tasks(tasks, 12.0 * static_cast<double>(kRows * k), task);
}

}  // namespace

void register_beta(Ops& ops) {
    ops.beta = beta;
    ops.beta_features[0] = features<float>;
    ops.beta_features[1] = features<double>;
}

}  // namespace LK_TARGET
}  // namespace lk
