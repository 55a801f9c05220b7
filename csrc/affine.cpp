// Vector scaling's sums (calibration/_scaling.py): for rows x_i (n, k) of logits, labels y_i,
// weights w_i and the diagonal map z = a ⊙ x + b,
//
//     loss_i = logsumexp(z_i) − z_iy,   ∂/∂a = (p_i − t_i) ⊙ x_i,   ∂/∂b = p_i − t_i
//
// with p_i = softmax(z_i) and t_i the label's one-hot row: Σw·loss, Σw(p − t)⊙x and Σw(p − t)
// in float64, in one read of each row from memory (then from cache: its max, the exponentials
// kept in a row buffer, the sums).  The classes are the SIMD lanes of the per-class sums, so no
// horizontal reduction is needed but the row's two (max, Σe).  Rows are summed in blocks of
// kRows whose partial sums are added in block order, so the result does not depend on the
// threads.  A NaN or infinite logit makes the sums NaN (the caller reports it).
#include <cmath>

#include "rowstats.hpp"

namespace lk {
namespace LK_TARGET {
namespace {

constexpr int64_t kRows = 256;

template <class T>
void diag_rows(const AffineDiagProblem& P, const double* av, const double* bv, int64_t kp, int64_t r0,
               int64_t r1, double* acc, double* e) {
    constexpr int L = kL<double>;
    const int64_t k = P.k;
    const T* x = static_cast<const T*>(P.x);
    double* gx = acc + 1;
    double* g1 = acc + 1 + kp;
    for (int64_t j = 0; j < 1 + 2 * kp; ++j) acc[j] = 0.0;
    const VF<double> ninf = splat<double>(-inf<double>());
    double loss = 0.0;
    for (int64_t i = r0; i < r1; ++i) {
        const T* xi = x + i * k;
        VF<double> vm = ninf;
        for (int64_t j = 0; j < k; j += L) {
            VF<double> z = load<double>(av + j) * load_f64<T>(xi + j, k - j, 0.0) + load<double>(bv + j);
            if (k - j < L) z = select<double>(load<double>(av + 2 * kp + j) != 0.0, z, ninf);  // padding lanes
            store<double>(e + j, z);
            vm = z > vm ? z : vm;
            vm = z != z ? z : vm;  // NaN wins
        }
        double m = hmax<double>(vm);
        for (int l = 0; l < L; ++l) m = vm[l] != vm[l] ? vm[l] : m;
        const VF<double> sm = splat<double>(m);
        VF<double> vs = VF<double>{};
        for (int64_t j = 0; j < k; j += L) {
            VF<double> ej = vexp<double>(load<double>(e + j) - sm);
            store<double>(e + j, ej);
            vs += ej;
        }
        const double s = hsum<double>(vs);
        const double w = P.weight ? P.weight[i] : 1.0;
        const int64_t y = P.labels[i];
        const double xy = static_cast<double>(xi[y]);
        loss += w * (m + std::log(s) - (av[y] * xy + bv[y]));
        const VF<double> ws = splat<double>(w / s);
        for (int64_t j = 0; j < k; j += L) {
            VF<double> pw = load<double>(e + j) * ws;  // w·p
            store<double>(gx + j, load<double>(gx + j) + pw * load_f64<T>(xi + j, k - j, 0.0));
            store<double>(g1 + j, load<double>(g1 + j) + pw);
        }
        gx[y] -= w * xy;
        g1[y] -= w;
    }
    acc[0] = loss;
}

template <class T> void affine_diag(AffineDiagProblem& P) {
    constexpr int L = kL<double>;
    const int64_t k = P.k, kp = (k + L - 1) / L * L;
    const int64_t m = 1 + 2 * k;
    for (int64_t j = 0; j < m; ++j) P.sums[j] = 0.0;
    if (P.n == 0 || k == 0) return;
    // a, b padded to whole vectors, then a row of 1 (real class) / 0 (padding) flags
    double* coef = static_cast<double*>(alloc<double>(3 * kp));
    for (int64_t j = 0; j < kp; ++j) {
        coef[j] = j < k ? P.a[j] : 0.0;
        coef[kp + j] = j < k ? P.b[j] : 0.0;
        coef[2 * kp + j] = j < k ? 1.0 : 0.0;
    }
    const int64_t blocks = (P.n + kRows - 1) / kRows;
    const int64_t stride = 1 + 2 * kp;
    double* part = static_cast<double*>(alloc<double>(blocks * stride));
    auto task = [&](int64_t b) {
        int64_t r0 = b * kRows, r1 = r0 + kRows < P.n ? r0 + kRows : P.n;
        double* e = static_cast<double*>(alloc<double>(kp));
        diag_rows<T>(P, coef, coef + kp, kp, r0, r1, part + b * stride, e);
        std::free(e);
    };
    run_tasks(blocks, 4.0 * static_cast<double>(kRows * k), task);
    double* comp = static_cast<double*>(alloc<double>(m));
    for (int64_t j = 0; j < m; ++j) comp[j] = 0.0;
    for (int64_t b = 0; b < blocks; ++b) {
        const double* pb = part + b * stride;
        neumaier(P.sums[0], comp[0], pb[0]);
        for (int64_t j = 0; j < k; ++j) {
            neumaier(P.sums[1 + j], comp[1 + j], pb[1 + j]);
            neumaier(P.sums[1 + k + j], comp[1 + k + j], pb[1 + kp + j]);
        }
    }
    for (int64_t j = 0; j < m; ++j) P.sums[j] += comp[j];
    std::free(comp);
    std::free(part);
    std::free(coef);
}

}  // namespace

void register_affine(Ops& ops) {
    ops.affine_diag[0] = affine_diag<float>;
    ops.affine_diag[1] = affine_diag<double>;
}

}  // namespace LK_TARGET
}  // namespace lk
