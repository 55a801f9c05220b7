// The temperature fit's sums: for logits z (rows i), labels y, weights w, β = 1/T and
// d = z − max z (so every exponential is at most 1 and none overflows):
//
//     nll_i  = log Σ_k e^{β d_ik} − β d_iy
//     grad_i = E_p[d_i] − d_iy          (d nll_i / dβ)
//     hess_i = Var_p[d_i] ≥ 0           (d² nll_i / dβ²)
//
// and Σw, Σw·nll, Σw·grad, Σw·hess over all rows, in float64, in one read of each row from
// memory (its max) and one from cache (the sums).  −inf entries are excluded classes: d is
// floored at −1e300, where e^{βd} is 0 and 0·d is 0 (0·(−inf) would be NaN).  A NaN or +inf
// makes the sums NaN, a label whose logit is −inf makes them inf: the caller reports both.
// Rows are summed in blocks of kRows whose partial sums are added in block order, so the
// result does not depend on the threads.
#include "rowstats.hpp"

namespace lk {
namespace LK_TARGET {
namespace {

constexpr int64_t kRows = 256;

template <class T>
void nll_rows(const NllProblem& P, int64_t r0, int64_t r1, double* out) {
    constexpr int L = kL<double>;
    const int64_t k = P.k;
    const T* z = static_cast<const T*>(P.z);
    double s[4] = {0, 0, 0, 0}, c[4] = {0, 0, 0, 0};
    const VF<double> vb = splat<double>(P.beta), floor = splat<double>(-1e300);
    for (int64_t i = r0; i < r1; ++i) {
        const T* zi = z + i * k;
        const double m = chunk_max<T, false>(zi, nullptr, k);
        const VF<double> vm = splat<double>(m);
        VF<double> s0 = VF<double>{}, s1 = VF<double>{}, s2 = VF<double>{};
        for (int64_t j = 0; j < k; j += L) {
            VF<double> d = load_f64<T>(zi + j, k - j, -inf<double>()) - vm;
            d = d < -1e300 ? floor : d;  // −inf (and the padding) → −1e300; NaN stays NaN
            VF<double> e = vexp<double>(vb * d);
            VF<double> ed = e * d;
            s0 += e;
            s1 += ed;
            s2 += ed * d;
        }
        double t0 = hsum<double>(s0), t1 = hsum<double>(s1), t2 = hsum<double>(s2);
        double d_y = static_cast<double>(zi[P.labels[i]]) - m;
        double e1 = t1 / t0;
        double nll = std::log(t0) - P.beta * d_y;
        double grad = e1 - d_y;
        double hess = t2 / t0 - e1 * e1;
        hess = hess > 0 ? hess : (hess != hess ? hess : 0.0);
        double w = P.weight ? P.weight[i] : 1.0;
        neumaier(s[0], c[0], w);
        neumaier(s[1], c[1], w * nll);
        neumaier(s[2], c[2], w * grad);
        neumaier(s[3], c[3], w * hess);
    }
    for (int q = 0; q < 4; ++q) out[q] = s[q] + c[q];
}

template <class T> void nll(NllProblem& P) {
    for (double& v : P.sums) v = 0;
    if (P.n == 0) return;
    const int64_t blocks = (P.n + kRows - 1) / kRows;
    double* part = static_cast<double*>(alloc<double>(4 * blocks));
    auto task = [&](int64_t b) {
        int64_t r0 = b * kRows, r1 = r0 + kRows < P.n ? r0 + kRows : P.n;
        nll_rows<T>(P, r0, r1, part + 4 * b);
    };
    run_tasks(blocks, (sizeof(T) == 4 ? 0.6 : 0.8) * static_cast<double>(kRows * P.k), task);
    double comp[4] = {0, 0, 0, 0};
    for (int64_t b = 0; b < blocks; ++b)
        for (int q = 0; q < 4; ++q) neumaier(P.sums[q], comp[q], part[4 * b + q]);
    for (int q = 0; q < 4; ++q) P.sums[q] += comp[q];
    std::free(part);
}

}  // namespace

void register_nll(Ops& ops) {
    ops.nll[0] = nll<float>;
    ops.nll[1] = nll<double>;
}

}  // namespace LK_TARGET
}  // namespace lk
