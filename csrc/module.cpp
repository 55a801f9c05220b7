// logitkit._kernels._native: the Python binding of the kernels (nanobind).
//
// The kernels are compiled once per SIMD target (CMakeLists.txt); at import the widest target
// the CPU runs is chosen (LOGITKIT_SIMD=baseline|avx2|avx512 asks for another, e.g. to compare).
// Every entry point checks its arrays (dtype, shape, C order) — the Python layer has already
// validated the user's arguments, so a failure here is a bug in logitkit, reported as a
// TypeError or ValueError — then releases the GIL and runs the kernel.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "kernels.hpp"

namespace nb = nanobind;

namespace {

using In = nb::ndarray<nb::ro, nb::device::cpu>;
using Out = nb::ndarray<nb::device::cpu>;

bool always() { return true; }
#if defined(LK_HAVE_AVX2)
bool has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif
#if defined(LK_HAVE_AVX512)
bool has_avx512() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

struct Target {
    const char* name;
    const lk::Ops& (*ops)();
    bool (*supported)();
};

// Widest first.
const Target kTargets[] = {
#if defined(LK_HAVE_AVX512)
    {"avx512", lk::avx512::ops, has_avx512},
#endif
#if defined(LK_HAVE_AVX2)
    {"avx2", lk::avx2::ops, has_avx2},
#endif
    {"baseline", lk::baseline::ops, always},
};

const lk::Ops* g_ops = nullptr;

std::vector<std::string> available_targets() {
    std::vector<std::string> out;
    for (const Target& t : kTargets)
        if (t.supported()) out.emplace_back(t.name);
    return out;
}

void set_target(const std::string& name) {
    for (const Target& t : kTargets) {
        if (name == t.name) {
            if (!t.supported()) throw nb::value_error(("this CPU cannot run the " + name + " kernels").c_str());
            g_ops = &t.ops();
            return;
        }
    }
    throw nb::value_error(("no kernels for SIMD target '" + name + "'").c_str());
}

void choose_target() {
    const char* env = std::getenv("LOGITKIT_SIMD");
    if (env != nullptr && *env != '\0') {
        for (const Target& t : kTargets) {
            if (std::strcmp(env, t.name) == 0 && t.supported()) {
                g_ops = &t.ops();
                return;
            }
        }
    }
    for (const Target& t : kTargets) {
        if (t.supported()) {
            g_ops = &t.ops();
            return;
        }
    }
}

// ------------------------------------------------------------------------------------------
// array checks
// ------------------------------------------------------------------------------------------

[[noreturn]] void fail(const char* name, const std::string& what) {
    throw nb::value_error((std::string("kernel argument `") + name + "`: " + what).c_str());
}

// 0 for float32, 1 for float64.
int float_index(const In& a, const char* name) {
    auto dt = a.dtype();
    if (dt == nb::dtype<float>()) return 0;
    if (dt == nb::dtype<double>()) return 1;
    fail(name, "expected float32 or float64");
}

template <class A> void check_c(const A& a, const char* name) {
    int64_t expect = 1;
    for (size_t i = a.ndim(); i-- > 0;) {
        if (a.shape(i) != 1 && a.stride(i) != expect) fail(name, "expected a C-contiguous array");
        expect *= static_cast<int64_t>(a.shape(i));
    }
}

template <class A> void check_shape(const A& a, const char* name, std::initializer_list<int64_t> shape) {
    if (a.ndim() != shape.size()) fail(name, "wrong number of dimensions");
    size_t i = 0;
    for (int64_t s : shape) {
        if (static_cast<int64_t>(a.shape(i)) != s) fail(name, "wrong shape");
        ++i;
    }
    check_c(a, name);
}

template <class A> void check_dtype(const A& a, const char* name, nb::dlpack::dtype dt) {
    if (a.dtype() != dt) fail(name, "wrong dtype");
}

const uint8_t* bool_data(const std::optional<In>& m, const char* name) {
    if (!m) return nullptr;
    auto dt = m->dtype();
    if (!(dt == nb::dtype<bool>() || dt == nb::dtype<uint8_t>())) fail(name, "expected booleans");
    return static_cast<const uint8_t*>(m->data());
}

uint8_t* flags_data(Out& a, const char* name) {
    auto dt = a.dtype();
    if (!(dt == nb::dtype<bool>() || dt == nb::dtype<uint8_t>())) fail(name, "expected booleans");
    return static_cast<uint8_t*>(a.data());
}

nb::dlpack::dtype float_dtype(int idx) { return idx == 0 ? nb::dtype<float>() : nb::dtype<double>(); }

// x as (N, K) rows, C order; returns its float index (0: float32, 1: float64).
int rows_of(const In& x, int64_t& n, int64_t& k) {
    int f = float_index(x, "x");
    if (x.ndim() != 2) fail("x", "expected 2 dimensions");
    check_c(x, "x");
    n = static_cast<int64_t>(x.shape(0));
    k = static_cast<int64_t>(x.shape(1));
    return f;
}

// A row mask of shape (1, K) (shared by every row) or (N, K); returns its number of rows.
int64_t mask_rows(const In& mask, int64_t n, int64_t k) {
    int64_t r = static_cast<int64_t>(mask.shape(0));
    if (mask.ndim() != 2 || (r != 1 && r != n) || static_cast<int64_t>(mask.shape(1)) != k)
        fail("mask", "expected shape (1, K) or (N, K)");
    check_c(mask, "mask");
    return r;
}

// ------------------------------------------------------------------------------------------
// entry points
// ------------------------------------------------------------------------------------------

void rows(In x, std::optional<Out> out, Out lse, Out special, std::optional<In> mask, double cap,
          double inv_t, int mode) {
    int64_t n, k;
    int f = rows_of(x, n, k);
    lk::RowsProblem p{};
    p.x = x.data();
    p.n = n;
    p.k = k;
    if (mode != lk::LSE) {
        if (!out) fail("out", "required for softmax and log_softmax");
        check_shape(*out, "out", {n, k});
        check_dtype(*out, "out", float_dtype(f));
        p.out = out->data();
    }
    check_shape(lse, "lse", {n});
    check_dtype(lse, "lse", nb::dtype<double>());
    check_shape(special, "special", {n});
    p.lse = static_cast<double*>(lse.data());
    p.special = flags_data(special, "special");
    p.mask = bool_data(mask, "mask");
    if (mask) p.mask_rows = mask_rows(*mask, n, k);
    if (!(inv_t > 0) || !(cap >= 0) || mode < 0 || mode > 2) fail("inv_t", "bad options");
    p.cap = cap;
    p.inv_t = inv_t;
    p.mode = mode;
    nb::gil_scoped_release release;
    g_ops->rows[f](p);
}

void strided(In x, std::optional<Out> out, Out lse, Out special, std::optional<In> mask, double inv_t,
             int mode) {
    int f = float_index(x, "x");
    if (x.ndim() != 3) fail("x", "expected 3 dimensions");
    int64_t o = x.shape(0), k = x.shape(1), in = x.shape(2);
    check_c(x, "x");
    lk::StridedProblem p{};
    p.x = x.data();
    p.outer = o;
    p.k = k;
    p.inner = in;
    if (mode != lk::LSE) {
        if (!out) fail("out", "required for softmax and log_softmax");
        check_shape(*out, "out", {o, k, in});
        check_dtype(*out, "out", float_dtype(f));
        p.out = out->data();
    }
    check_shape(lse, "lse", {o, in});
    check_dtype(lse, "lse", nb::dtype<double>());
    check_shape(special, "special", {o, in});
    p.lse = static_cast<double*>(lse.data());
    p.special = flags_data(special, "special");
    p.mask = bool_data(mask, "mask");
    if (mask) check_shape(*mask, "mask", {o, k, in});
    if (!(inv_t > 0) || mode < 0 || mode > 2) fail("inv_t", "bad options");
    p.inv_t = inv_t;
    p.mode = mode;
    nb::gil_scoped_release release;
    g_ops->strided[f](p);
}

void cross_entropy(In x, std::optional<Out> out, std::optional<In> labels, std::optional<In> probs,
                   std::optional<In> mask, std::optional<In> weight, In counted, In scales,
                   double label_smoothing, double z_loss, double logit_l2, double softcap,
                   double inv_t, Out loss, std::optional<Out> lse, std::optional<Out> coef, Out special) {
    int64_t n, k;
    int f = rows_of(x, n, k);
    lk::CeProblem p{};
    p.x = x.data();
    p.n = n;
    p.k = k;
    if (out) {
        check_shape(*out, "out", {n, k});
        check_dtype(*out, "out", float_dtype(f));
        p.out = out->data();
        if (p.out != p.x) {  // the same array is fine; a partial overlap is not
            const char* a = static_cast<const char*>(p.x);
            const char* b = static_cast<const char*>(p.out);
            size_t bytes = static_cast<size_t>(n * k) * (f == 0 ? 4 : 8);
            if (a < b + bytes && b < a + bytes) fail("out", "overlaps the logits without being them");
        }
    }
    if (labels.has_value() == probs.has_value()) fail("labels", "expected labels or probabilities");
    if (labels) {
        check_shape(*labels, "labels", {n});
        check_dtype(*labels, "labels", nb::dtype<int64_t>());
        p.labels = static_cast<const int64_t*>(labels->data());
    } else {
        check_shape(*probs, "probs", {n, k});
        check_dtype(*probs, "probs", float_dtype(f));
        p.probs = probs->data();
    }
    p.mask = bool_data(mask, "mask");
    if (mask) p.mask_rows = mask_rows(*mask, n, k);
    if (weight) {
        check_shape(*weight, "weight", {k});
        check_dtype(*weight, "weight", float_dtype(f));
        p.weight = weight->data();
    }
    check_shape(counted, "counted", {n});
    p.counted = bool_data(std::optional<In>(counted), "counted");
    if (scales.ndim() != 1 || (static_cast<int64_t>(scales.shape(0)) != 1 && static_cast<int64_t>(scales.shape(0)) != n))
        fail("scales", "expected shape (1,) or (N,)");
    p.scales_like_x = scales.dtype() == float_dtype(f);
    if (!p.scales_like_x) check_dtype(scales, "scales", nb::dtype<double>());
    check_c(scales, "scales");
    p.scales = scales.data();
    p.n_scales = scales.shape(0);
    check_shape(loss, "loss", {n});
    check_dtype(loss, "loss", nb::dtype<double>());
    p.loss = static_cast<double*>(loss.data());
    auto stat = [n](std::optional<Out>& a, const char* name) -> double* {  // optional outputs
        if (!a) return nullptr;
        check_shape(*a, name, {n});
        check_dtype(*a, name, nb::dtype<double>());
        return static_cast<double*>(a->data());
    };
    p.lse = stat(lse, "lse");
    p.coef = stat(coef, "coef");
    check_shape(special, "special", {n});
    p.special = flags_data(special, "special");
    if (!(inv_t > 0) || !(softcap >= 0) || !(label_smoothing >= 0 && label_smoothing <= 1) || !(z_loss >= 0) ||
        !(logit_l2 >= 0))
        fail("options", "out of range");
    p.eps = label_smoothing;
    p.cz = z_loss;
    p.lam = logit_l2;
    p.cap = softcap;
    p.inv_t = inv_t;
    nb::gil_scoped_release release;
    g_ops->ce[f](p);
}

nb::tuple nll_sums(In z, In labels, std::optional<In> weight, double beta) {
    int64_t n, k;
    int f = rows_of(z, n, k);
    check_shape(labels, "labels", {n});
    check_dtype(labels, "labels", nb::dtype<int64_t>());
    lk::NllProblem p{};
    p.z = z.data();
    p.labels = static_cast<const int64_t*>(labels.data());
    if (weight) {
        check_shape(*weight, "weight", {n});
        check_dtype(*weight, "weight", nb::dtype<double>());
        p.weight = static_cast<const double*>(weight->data());
    }
    if (k == 0 && n > 0) fail("z", "expected at least one class");
    const int64_t* y = p.labels;
    for (int64_t i = 0; i < n; ++i)
        if (y[i] < 0 || y[i] >= k) fail("labels", "out of range");
    p.n = n;
    p.k = k;
    p.beta = beta;
    {
        nb::gil_scoped_release release;
        g_ops->nll[f](p);
    }
    return nb::make_tuple(p.sums[0], p.sums[1], p.sums[2], p.sums[3]);
}

// Beta calibration's per-class sums (csrc/beta.cpp): feat (n, 2c), theta (3, c) → (10, c).
void beta_sums(In feat, std::optional<In> weight, In theta, Out sums) {
    if (feat.ndim() != 2 || feat.shape(1) % 2 != 0) fail("feat", "expected (n, 2c) features");
    const int64_t n = static_cast<int64_t>(feat.shape(0)), c = static_cast<int64_t>(feat.shape(1)) / 2;
    check_shape(feat, "feat", {n, 2 * c});
    check_dtype(feat, "feat", nb::dtype<double>());
    check_shape(theta, "theta", {3, c});
    check_dtype(theta, "theta", nb::dtype<double>());
    check_shape(sums, "sums", {10, c});
    check_dtype(sums, "sums", nb::dtype<double>());
    lk::BetaProblem p{};
    p.feat = static_cast<const double*>(feat.data());
    if (weight) {
        check_shape(*weight, "weight", {n});
        check_dtype(*weight, "weight", nb::dtype<double>());
        p.weight = static_cast<const double*>(weight->data());
    }
    p.theta = static_cast<const double*>(theta.data());
    p.n = n;
    p.c = c;
    p.sums = static_cast<double*>(sums.data());
    {
        nb::gil_scoped_release release;
        g_ops->beta(p);
    }
}

// Beta calibration's features of logits x (n, k) into out (n, 2k) float64 (csrc/beta.cpp).
void beta_features(In x, Out out, double floor) {
    int64_t n, k;
    int f = rows_of(x, n, k);
    check_shape(out, "out", {n, 2 * k});
    check_dtype(out, "out", nb::dtype<double>());
    lk::BetaFeatures p{x.data(), static_cast<double*>(out.data()), n, k, floor};
    nb::gil_scoped_release release;
    g_ops->beta_features[f](p);
}

// Vector scaling's sums (csrc/affine.cpp): (1 + 2k,) Σw·loss, Σw(p − t)x, Σw(p − t).
void affine_diag_sums(In x, In labels, std::optional<In> weight, In a, In b, Out sums) {
    int64_t n, k;
    int f = rows_of(x, n, k);
    check_shape(labels, "labels", {n});
    check_dtype(labels, "labels", nb::dtype<int64_t>());
    check_shape(a, "a", {k});
    check_dtype(a, "a", nb::dtype<double>());
    check_shape(b, "b", {k});
    check_dtype(b, "b", nb::dtype<double>());
    check_shape(sums, "sums", {1 + 2 * k});
    check_dtype(sums, "sums", nb::dtype<double>());
    lk::AffineDiagProblem p{};
    p.x = x.data();
    p.labels = static_cast<const int64_t*>(labels.data());
    for (int64_t i = 0; i < n; ++i)
        if (p.labels[i] < 0 || p.labels[i] >= k) fail("labels", "out of range");
    if (weight) {
        check_shape(*weight, "weight", {n});
        check_dtype(*weight, "weight", nb::dtype<double>());
        p.weight = static_cast<const double*>(weight->data());
    }
    p.a = static_cast<const double*>(a.data());
    p.b = static_cast<const double*>(b.data());
    p.n = n;
    p.k = k;
    p.sums = static_cast<double*>(sums.data());
    nb::gil_scoped_release release;
    g_ops->affine_diag[f](p);
}

// The calibration engine's pass: sums added into tot/bins/cw; returns (flagged rows, invalid).
nb::tuple calibration_sums(In x, In labels, int64_t offset, int64_t groups, bool from_logits, double beta,
                           double tol, bool top, bool brier, bool moments, bool nll, std::optional<In> edges,
                           bool uniform, std::optional<In> cw_edges, bool cw_uniform, Out tot,
                           std::optional<Out> bins, std::optional<Out> cw, std::optional<Out> conf,
                           std::optional<Out> hit, Out flagged, Out scratch, int64_t tasks) {
    int64_t n, k;
    int f = rows_of(x, n, k);
    lk::CalibProblem p{};
    p.x = x.data();
    p.n = n;
    p.k = k;
    check_shape(labels, "labels", {n});
    if (labels.dtype() == nb::dtype<int32_t>()) {  // read as they are: no int64 copy of the labels
        p.labels32 = static_cast<const int32_t*>(labels.data());
    } else {
        check_dtype(labels, "labels", nb::dtype<int64_t>());
        p.labels = static_cast<const int64_t*>(labels.data());
    }
    if (groups < 1 || offset < 0 || !(beta > 0) || !(tol >= 0) || tasks < 1 || (n > 0 && tasks > n))
        fail("groups", "bad options");
    p.offset = offset;
    p.groups = groups;
    p.from_logits = from_logits;
    p.beta = beta;
    p.tol = tol;
    p.top = top;
    p.brier = brier;
    p.moments = moments;
    p.nll = nll;
    check_shape(tot, "tot", {groups, 4});
    check_dtype(tot, "tot", nb::dtype<double>());
    p.tot = static_cast<double*>(tot.data());
    const int64_t fields = moments ? 5 : 3;
    if (edges) {
        if (edges->ndim() != 1 || edges->shape(0) < 2) fail("edges", "expected (B + 1,) edges");
        check_c(*edges, "edges");
        check_dtype(*edges, "edges", nb::dtype<double>());
        p.n_bins = static_cast<int64_t>(edges->shape(0)) - 1;
        p.edges = static_cast<const double*>(edges->data());
        p.uniform = uniform;
        if (!bins || !top) fail("bins", "required with edges (and top)");
        check_shape(*bins, "bins", {groups, fields, p.n_bins});
        check_dtype(*bins, "bins", nb::dtype<double>());
        p.bins = static_cast<double*>(bins->data());
    }
    if (cw_edges) {
        if (cw_edges->ndim() < 1 || cw_edges->ndim() > 2 || cw_edges->shape(0) < 2 ||
            (cw_edges->ndim() == 2 && static_cast<int64_t>(cw_edges->shape(1)) != k))
            fail("cw_edges", "expected (CB + 1,) or (CB + 1, K) edges");
        check_c(*cw_edges, "cw_edges");
        check_dtype(*cw_edges, "cw_edges", nb::dtype<double>());
        p.cw_bins = static_cast<int64_t>(cw_edges->shape(0)) - 1;
        p.cw_edges = static_cast<const double*>(cw_edges->data());
        p.cw_per_class = cw_edges->ndim() == 2;
        p.cw_uniform = cw_uniform && !p.cw_per_class;
        if (!cw) fail("cw", "required with cw_edges");
        check_shape(*cw, "cw", {groups, 5, k, p.cw_bins});
        check_dtype(*cw, "cw", nb::dtype<double>());
        p.cw = static_cast<double*>(cw->data());
    }
    if (conf.has_value() != hit.has_value() || (conf && !top)) fail("conf", "expected conf and hit (with top) or neither");
    if (conf) {
        for (auto* a : {&*conf, &*hit}) {
            check_shape(*a, "conf", {n});
            check_dtype(*a, "conf", nb::dtype<double>());
        }
        p.conf = static_cast<double*>(conf->data());
        p.hit = static_cast<double*>(hit->data());
    }
    check_shape(flagged, "flagged", {n});
    p.flagged = flags_data(flagged, "flagged");
    p.acc_len = groups * (4 + fields * p.n_bins + 5 * k * p.cw_bins);
    check_shape(scratch, "scratch", {tasks * p.acc_len});
    check_dtype(scratch, "scratch", nb::dtype<double>());
    p.scratch = static_cast<double*>(scratch.data());
    p.tasks = tasks;
    {
        nb::gil_scoped_release release;
        g_ops->calib[f](p);
    }
    return nb::make_tuple(p.n_flagged, p.invalid != 0);
}

void map(lk::MapFn const* fns, const char* what, In a, Out out) {
    int f = float_index(a, "a");
    if (a.ndim() != 1) fail("a", "expected 1 dimension");
    check_c(a, "a");
    check_shape(out, "out", {static_cast<int64_t>(a.shape(0))});
    check_dtype(out, "out", float_dtype(f));
    if (fns[f] == nullptr) fail("a", std::string("no ") + what + " for this dtype");
    nb::gil_scoped_release release;
    fns[f](a.data(), out.data(), a.shape(0));
}

}  // namespace

NB_MODULE(_native, m) {
    choose_target();
    m.doc() = "logitkit's native CPU kernels (C++17, one build per SIMD target, chosen at import).";
    m.def("rows", &rows, nb::arg("x"), nb::arg("out").none(), nb::arg("lse"), nb::arg("special"),
          nb::arg("mask").none(), nb::arg("cap"), nb::arg("inv_t"), nb::arg("mode"),
          "softmax (mode 0), log_softmax (1) or logsumexp (2) over the rows of x (N, K).");
    m.def("strided", &strided, nb::arg("x"), nb::arg("out").none(), nb::arg("lse"), nb::arg("special"),
          nb::arg("mask").none(), nb::arg("inv_t"), nb::arg("mode"),
          "The same over the middle axis of x (outer, K, inner).");
    m.def("cross_entropy", &cross_entropy, nb::kw_only(), nb::arg("x"), nb::arg("out").none(),
          nb::arg("labels").none(), nb::arg("probs").none(), nb::arg("mask").none(), nb::arg("weight").none(),
          nb::arg("counted"), nb::arg("scales"), nb::arg("label_smoothing"), nb::arg("z_loss"),
          nb::arg("logit_l2"), nb::arg("softcap"), nb::arg("inv_t"), nb::arg("loss"), nb::arg("lse").none(),
          nb::arg("coef").none(), nb::arg("special"),
          "Per-row cross-entropy, log-sum-exp and gradient coefficient; the gradient into out.");
    m.def("nll_sums", &nll_sums, nb::arg("z"), nb::arg("labels"), nb::arg("weight").none(), nb::arg("beta"),
          "(Σw, Σw·nll, Σw·dnll/dβ, Σw·d²nll/dβ²) of the temperature fit, in float64.");
    m.def("beta_sums", &beta_sums, nb::arg("feat"), nb::arg("weight").none(), nb::arg("theta"), nb::arg("sums"),
          "Beta calibration's ten per-class sums of the loss, gradient and Hessian terms, in float64.");
    m.def("beta_features", &beta_features, nb::arg("x"), nb::arg("out"), nb::arg("floor"),
          "Beta calibration's features [log p | −log(1 − p)] of rows of logits, floored, in float64.");
    m.def("affine_diag_sums", &affine_diag_sums, nb::arg("x"), nb::arg("labels"), nb::arg("weight").none(),
          nb::arg("a"), nb::arg("b"), nb::arg("sums"),
          "Vector scaling's Σw·loss and gradient in (a, b) of the cross-entropy of a ⊙ x + b, in float64.");
    m.def("calibration_sums", &calibration_sums, nb::arg("x"), nb::arg("labels"), nb::kw_only(),
          nb::arg("offset"), nb::arg("groups"), nb::arg("from_logits"), nb::arg("beta"), nb::arg("tol"),
          nb::arg("top"), nb::arg("brier"), nb::arg("moments"), nb::arg("nll") = true, nb::arg("edges").none(), nb::arg("uniform"),
          nb::arg("cw_edges").none(), nb::arg("cw_uniform"), nb::arg("tot"), nb::arg("bins").none(),
          nb::arg("cw").none(), nb::arg("conf").none(), nb::arg("hit").none(), nb::arg("flagged"),
          nb::arg("scratch"), nb::arg("tasks"),
          "The calibration engine's one pass: per-group totals, top-label and class-wise bin sums "
          "added into tot, bins and cw; returns (rows flagged, probabilities not accepted).");
    m.def("exp", [](In a, Out out) { map(g_ops->exp, "exp", a, out); }, "The kernels' exp (d ≤ 0).");
    m.def("tanh", [](In a, Out out) { map(g_ops->tanh, "tanh", a, out); }, "The kernels' tanh.");
    m.def("log1p", [](In a, Out out) { map(g_ops->log1p, "log1p", a, out); }, "The kernels' log1p.");
    m.def("target", [] { return std::string(g_ops->name); }, "The SIMD target in use.");
    m.def("targets", &available_targets, "The SIMD targets built in and supported by this CPU.");
    m.def("set_target", &set_target, nb::arg("name"), "Use another SIMD target (tests, comparisons).");
    m.def("num_threads", &lk::num_threads, "Threads the kernels may use (the caller's included).");
    m.def("set_num_threads", &lk::set_num_threads, nb::arg("n"), "Set it (0: the CPUs available).");
    m.def("min_parallel_ns", &lk::min_parallel_ns, "Estimated work below which a call runs on one thread.");
    m.def("set_min_parallel_ns", &lk::set_min_parallel_ns, nb::arg("ns"), "Set it.");
    m.def("pool_jobs", &lk::pool_jobs, "Calls that ran on the thread pool so far.");
    m.def("stream_min_bytes", &lk::stream_min_bytes, "Outputs this large are written by streaming stores.");
    m.def("set_stream_min_bytes", &lk::set_stream_min_bytes, nb::arg("bytes"), "Set it.");
    m.def("pool_helper_tasks", &lk::pool_helper_tasks, "Tasks the pool's helper threads ran so far.");
}
