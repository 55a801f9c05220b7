// The interface between the Python binding (module.cpp), the thread pool (pool.cpp) and the
// kernel files, which are compiled once per SIMD target (see CMakeLists.txt).
//
// Only plain data and function declarations live here: the kernel files include it inside
// and outside their per-target namespace alike, and nothing in it is an inline function that
// a wider target could compile for a narrower one.
//
// Adding a kernel file: write `csrc/NAME.cpp` (include "simd.hpp" and this header, define its
// functions inside `namespace lk::LK_TARGET` and a `void register_NAME(Ops&)` there that fills
// its entries of `Ops`), add its entries to `Ops` below and `X(NAME)` to LK_KERNEL_FILES, and
// list the file in CMakeLists.txt's LK_KERNEL_SOURCES.  module.cpp binds the new entries.
#pragma once

#include <cstdint>

#define LK_KERNEL_FILES(X) X(rows) X(ce) X(nll) X(calib) X(mathfns) X(beta) X(affine)

namespace lk {

enum Mode : int { SOFTMAX = 0, LOG_SOFTMAX = 1, LSE = 2 };

// softmax / log_softmax / logsumexp over rows: x is (n, k), C-contiguous.
struct RowsProblem {
    const void* x;
    void* out;             // (n, k) like x; unused (may be null) for LSE
    double* lse;           // (n,): the log-sum-exp of each row (of x/T)
    uint8_t* special;      // (n,), all 0 on entry: rows the kernel could not compute are set 1
    const uint8_t* mask;   // (mask_rows, k) booleans, or null
    int64_t mask_rows;     // 1 (one mask row shared by every row) or n
    int64_t n, k;
    double cap;            // softcap c > 0, or 0 for none
    double inv_t;          // 1/T, already rounded to x's precision, finite and > 0
    int mode;
};

// The same over the middle axis of x seen as (outer, k, inner), inner > 1 (no softcap).
struct StridedProblem {
    const void* x;
    void* out;             // (outer, k, inner), or null for LSE
    double* lse;           // (outer, inner)
    uint8_t* special;      // (outer, inner), all 0 on entry
    const uint8_t* mask;   // (outer, k, inner) booleans, or null
    int64_t outer, k, inner;
    double inv_t;
    int mode;
};

// Cross-entropy rows with their gradient; the class axis is last, x is (n, k).
struct CeProblem {
    const void* x;
    void* out;               // gradient (n, k) like x (may be x itself), or null for none
    const int64_t* labels;   // (n,) class indices, or null with probs
    const void* probs;       // (n, k) target probabilities like x, or null
    const uint8_t* mask;     // (mask_rows, k), or null
    int64_t mask_rows;
    const void* weight;      // (k,) class weights like x, or null
    const uint8_t* counted;  // (n,): rows that count (not ignored, not fully masked)
    const void* scales;      // the gradient's per-row factor: (n_scales,), n_scales 1 or n,
    int64_t n_scales;        // float64, or x's dtype when scales_like_x (read as it is, no copy)
    int scales_like_x;
    int64_t n, k;
    double eps, cz, lam, cap, inv_t;
    double* loss;            // (n,) per-row loss
    double* lse;             // (n,) log-sum-exp of the scaled logits, or null for none
    double* coef;            // (n,) Σ_c W_c + 2·z_loss·lse: the gradient's coefficient of p, or null
    uint8_t* special;        // (n,), all 0 on entry
};

// The temperature fit's sums (calibration/_nll_sums.py), over rows of z (n, k), in float64.
struct NllProblem {
    const void* z;
    const int64_t* labels;  // (n,)
    const double* weight;   // (n,) sample weights, or null
    int64_t n, k;
    double beta;
    double sums[4];         // out: Σw, Σw·nll, Σw·dnll/dβ, Σw·d²nll/dβ²
};

// Beta calibration's sums (calibration/_binary.py, csrc/beta.cpp), per calibrated class, float64.
struct BetaProblem {
    const double* feat;     // (n, 2c): log p of the c classes, then −log(1 − p)
    const double* weight;   // (n,) sample weights, or null
    const double* theta;    // (3, c): the coefficients a, b, c of every class
    int64_t n, c;
    double* sums;           // out (10, c): see csrc/beta.cpp
};

// Beta calibration's features of rows of logits x (n, k) (csrc/beta.cpp), into out (n, 2k).
struct BetaFeatures {
    const void* x;
    double* out;
    int64_t n, k;
    double floor;           // log ε: both logs are floored there
};

// Vector scaling's sums (calibration/_scaling.py, csrc/affine.cpp): the cross-entropy of
// a ⊙ x + b over rows of x (n, k) with labels, and its gradient in (a, b), in float64.
struct AffineDiagProblem {
    const void* x;
    const int64_t* labels;  // (n,) in [0, k)
    const double* weight;   // (n,), or null
    const double* a;        // (k,)
    const double* b;        // (k,)
    int64_t n, k;
    double* sums;           // out (1 + 2k): Σw·loss, Σw(p − t)x, Σw(p − t)
};

// The calibration engine's one pass (calibration/_engine.py, csrc/calib.cpp): per-row statistics
// of probabilities or logits (rows of x), binned and summed per row group, in float64.
struct CalibProblem {
    const void* x;             // (n, k) probabilities, or logits with from_logits; C order
    const int64_t* labels;     // (n,) in [0, k)
    const int32_t* labels32;   // or these, when not null (int32 labels read as they are)
    int64_t n, k;
    int64_t offset;            // the stream index of row 0 (row i's group is that of offset + i)
    int64_t groups;            // G ≥ 1
    int from_logits;
    double beta;               // inverse temperature (logits)
    double tol;                // probabilities: rows whose sum is further from 1 are not accepted
    int top, brier, moments;   // what to compute (the engine's Spec)
    int nll;                   // Σ −log p_y (else left 0)
    int64_t n_bins;            // top-label bins B (0: none)
    const double* edges;       // (B + 1,): 0, the inner edges, 1
    int uniform;               // edges[b] is the correctly rounded b/B: bins by arithmetic
    int64_t cw_bins;           // class-wise bins CB (0: none)
    const double* cw_edges;    // (CB + 1,) shared, or (CB + 1, k) per class
    int cw_per_class, cw_uniform;
    double* tot;               // (G, 4) += rows, hits, Σ −log p_y, Σ Brier
    double* bins;              // (G, F, B) += count, Σ conf, Σ hit (, Σ conf², Σ conf·hit): F = 3 or 5
    double* cw;                // (G, 5, k, CB) += count, Σ p, Σ hit, Σ p², Σ p·hit
    double* conf;              // (n,) per-row confidence, or null
    double* hit;               // (n,) per-row correctness, or null
    uint8_t* flagged;          // (n,), 0 on entry: logit rows left to the caller (NaN, +inf, no finite entry)
    double* scratch;           // (tasks, acc_len) the tasks' own sums
    int64_t tasks, acc_len;    // the rows are cut into `tasks` equal ranges (by the caller, from the shape)
    int64_t n_flagged;         // out
    int invalid;               // out: probabilities the kernel does not accept (the caller judges them)
};

using RowsFn = void (*)(const RowsProblem&);
using StridedFn = void (*)(const StridedProblem&);
using CeFn = void (*)(const CeProblem&);
using NllFn = void (*)(NllProblem&);
using CalibFn = void (*)(CalibProblem&);
using BetaFn = void (*)(BetaProblem&);
using BetaFeaturesFn = void (*)(const BetaFeatures&);
using AffineDiagFn = void (*)(AffineDiagProblem&);
using MapFn = void (*)(const void* in, void* out, int64_t n);

// One target's kernels; index [0] is float32, [1] float64.
struct Ops {
    const char* name;
    RowsFn rows[2];
    StridedFn strided[2];
    CeFn ce[2];
    NllFn nll[2];
    CalibFn calib[2];
    BetaFn beta;  // float64 only
    BetaFeaturesFn beta_features[2];
    AffineDiagFn affine_diag[2];
    MapFn exp[2], tanh[2], log1p[2];  // the vectorised functions, for the accuracy tests
};

// ------------------------------------------------------------------------------------------
// The thread pool (pool.cpp), for the kernels.
// ------------------------------------------------------------------------------------------

using TaskFn = void (*)(void* ctx, int64_t task);

// Run fn(ctx, i) for i in [0, ntasks), on the calling thread and, when the estimated work
// (ntasks · ns_per_task nanoseconds) is worth it and the pool is free, on pool threads that
// claim tasks from an atomic counter.  Returns when every task has run.
void parallel_for(int64_t ntasks, double ns_per_task, TaskFn fn, void* ctx);

int num_threads();
void set_num_threads(int n);  // 0: the CPUs this process may run on
double min_parallel_ns();
void set_min_parallel_ns(double ns);
// Outputs at least this large are written by streaming stores (3/4 of the last-level cache, as
// glibc's memcpy; settable for tests and comparisons).
int64_t stream_min_bytes();
void set_stream_min_bytes(int64_t bytes);
int64_t pool_jobs();          // calls that ran on the pool so far (counters for the tests)
int64_t pool_helper_tasks();  // tasks that the pool's helper threads ran so far

}  // namespace lk

// Each kernel file's registration, per target.
#define LK_DECLARE_REGISTER(NAME) void register_##NAME(::lk::Ops&);
#define LK_DECLARE_TARGET(T) \
    namespace lk {           \
    namespace T {            \
    LK_KERNEL_FILES(LK_DECLARE_REGISTER) \
    const Ops& ops();        \
    }                        \
    }
LK_DECLARE_TARGET(baseline)
LK_DECLARE_TARGET(avx2)
LK_DECLARE_TARGET(avx512)
