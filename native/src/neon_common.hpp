// Shared row loop of the 128-bit NEON int8 kernels (plain NEON and dotprod differ only in the
// multiply-add). Internal linkage on purpose: see x86_256.hpp.
#pragma once
#include <arm_neon.h>

#include <cstddef>
#include <cstdint>

namespace shelfrank {
namespace {

inline int32_t tail_i8(const int8_t* q, const int8_t* r, size_t j, size_t d) {
    int32_t acc = 0;
    for (; j < d; ++j) acc += int32_t(q[j]) * int32_t(r[j]);
    return acc;
}

// out[i] = dot(q, row i); `dp(acc, x, q)` accumulates 16 signed byte products into 4 int32 lanes.
template <class Dp>
inline void dot_i8_128(const int8_t* q, const int8_t* rows, size_t n, size_t d, int32_t* out,
                       Dp dp) {
    const size_t dv = d & ~size_t(15);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const int8_t* r0 = rows + i * d;
        const int8_t* r1 = r0 + d;
        const int8_t* r2 = r1 + d;
        const int8_t* r3 = r2 + d;
        int32x4_t a0 = vdupq_n_s32(0), a1 = a0, a2 = a0, a3 = a0;
        for (size_t j = 0; j < dv; j += 16) {
            const int8x16_t qv = vld1q_s8(q + j);
            a0 = dp(a0, vld1q_s8(r0 + j), qv);
            a1 = dp(a1, vld1q_s8(r1 + j), qv);
            a2 = dp(a2, vld1q_s8(r2 + j), qv);
            a3 = dp(a3, vld1q_s8(r3 + j), qv);
        }
        out[i] = vaddvq_s32(a0) + tail_i8(q, r0, dv, d);
        out[i + 1] = vaddvq_s32(a1) + tail_i8(q, r1, dv, d);
        out[i + 2] = vaddvq_s32(a2) + tail_i8(q, r2, dv, d);
        out[i + 3] = vaddvq_s32(a3) + tail_i8(q, r3, dv, d);
    }
    for (; i < n; ++i) {
        const int8_t* r = rows + i * d;
        int32x4_t a = vdupq_n_s32(0);
        for (size_t j = 0; j < dv; j += 16) a = dp(a, vld1q_s8(r + j), vld1q_s8(q + j));
        out[i] = vaddvq_s32(a) + tail_i8(q, r, dv, d);
    }
}

}  // namespace
}  // namespace shelfrank
