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
// One row at a time, two accumulators along d, so loads walk memory strictly in order.
template <class Dp>
inline void dot_i8_128(const int8_t* q, const int8_t* rows, size_t n, size_t d, int32_t* out, Dp dp) {
    const size_t dv = d & ~size_t(15);
    for (size_t i = 0; i < n; ++i) {
        const int8_t* r = rows + i * d;
        int32x4_t a0 = vdupq_n_s32(0), a1 = a0;
        size_t j = 0;
        for (; j + 32 <= dv; j += 32) {
            a0 = dp(a0, vld1q_s8(r + j), vld1q_s8(q + j));
            a1 = dp(a1, vld1q_s8(r + j + 16), vld1q_s8(q + j + 16));
        }
        if (j < dv) a0 = dp(a0, vld1q_s8(r + j), vld1q_s8(q + j));
        out[i] = vaddvq_s32(vaddq_s32(a0, a1)) + tail_i8(q, r, dv, d);
    }
}

}  // namespace
}  // namespace shelfrank
