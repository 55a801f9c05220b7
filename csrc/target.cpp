// One SIMD target's table of kernels (compiled once per target, like the kernel files).
#include "kernels.hpp"

#define LK_STR2(x) #x
#define LK_STR(x) LK_STR2(x)

namespace lk {
namespace LK_TARGET {

const Ops& ops() {
    static const Ops table = [] {
        Ops t{};
        t.name = LK_STR(LK_TARGET);
#define LK_CALL_REGISTER(NAME) register_##NAME(t);
        LK_KERNEL_FILES(LK_CALL_REGISTER)
#undef LK_CALL_REGISTER
        return t;
    }();
    return table;
}

}  // namespace LK_TARGET
}  // namespace lk
