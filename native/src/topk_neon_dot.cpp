// NEON dotprod (armv8.2-a+dotprod: Cortex-A55/A76/A78, Raspberry Pi 5, RK3588, Jetson Orin).
// int8: sdot (vdotq_s32) accumulates four s8×s8 products per int32 lane; row loop shared with NEON
//       (neon_common.hpp: one row at a time, scalar row tail). fp32 and the read probe reuse the NEON kernels.
#include "shelfrank/topk.hpp"

#if defined(__aarch64__)
#pragma GCC target("arch=armv8.2-a+dotprod")
#include <arm_neon.h>
#include "neon_common.hpp"
#endif

namespace shelfrank {

#if defined(__aarch64__)
namespace {

inline int32x4_t dp_i8(int32x4_t acc, int8x16_t x, int8x16_t q) { return vdotq_s32(acc, x, q); }

void dot_i8_neon_dot(const int8_t* q, const int8_t* rows, size_t n, size_t d, int32_t* out) {
    dot_i8_128(q, rows, n, d, out, dp_i8);
}

}  // namespace

const IsaKernels* neon_dot_kernels() {
    static const IsaKernels k = {"neon_dot", dot_i8_neon_dot, neon_kernels()->dot_f32,
                                 neon_kernels()->read_probe};
    return &k;
}
#else
const IsaKernels* neon_dot_kernels() { return nullptr; }
#endif

}  // namespace shelfrank
