// The vectorised exp, tanh and log1p over whole arrays: exposed for the accuracy tests, which
// prove them against mpmath on every target the CPU runs.
#include "rowstats.hpp"

namespace lk {
namespace LK_TARGET {
namespace {

template <class T, VF<T> (*F)(VF<T>)>
void map(const void* in, void* out, int64_t n) {
    constexpr int L = kL<T>;
    const T* a = static_cast<const T*>(in);
    T* b = static_cast<T*>(out);
    for (int64_t i = 0; i < n; i += L) {
        int64_t r = n - i;
        VF<T> v = F(r >= L ? load<T>(a + i) : load_part<T>(a + i, r, T(0)));
        if (r >= L) store<T>(b + i, v); else store_part<T>(b + i, v, r);
    }
}

template <class T> VF<T> exp_fn(VF<T> v) { return vexp<T>(v); }
template <class T> VF<T> tanh_fn(VF<T> v) { return vtanh<T>(v); }
VF<double> log1p_fn(VF<double> v) { return vlog1p(v); }

}  // namespace

void register_mathfns(Ops& ops) {
    ops.exp[0] = map<float, exp_fn<float>>;
    ops.exp[1] = map<double, exp_fn<double>>;
    ops.tanh[0] = map<float, tanh_fn<float>>;
    ops.tanh[1] = map<double, tanh_fn<double>>;
    ops.log1p[0] = nullptr;  // the kernels take their logs in double only
    ops.log1p[1] = map<double, log1p_fn>;
}

}  // namespace LK_TARGET
}  // namespace lk
