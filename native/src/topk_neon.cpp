// NEON / Advanced SIMD (aarch64 baseline: Cortex-A72 and later, Raspberry Pi 4).
// int8: vmull_s8 + vmlal_high_s8 give 16-bit sums of two products (no overflow: q ∈ [-127, 127],
//       so |pair| ≤ 2·128·127 = 32512), folded into int32 lanes with vpadalq_s16; one row at a
//       time with two accumulators (in-order loads), scalar row tail.
// fp32: vfmaq_f32 into four 4-lane accumulators, one row at a time, scalar tail.
#include "shelfrank/topk.hpp"

#if defined(__aarch64__)
#include <arm_neon.h>
#include "neon_common.hpp"
#endif

namespace shelfrank {

#if defined(__aarch64__)
namespace {

inline int32x4_t dp_i8(int32x4_t acc, int8x16_t x, int8x16_t q) {
    int16x8_t p = vmull_s8(vget_low_s8(x), vget_low_s8(q));
    p = vmlal_high_s8(p, x, q);
    return vpadalq_s16(acc, p);
}

void dot_i8_neon(const int8_t* q, const int8_t* rows, size_t n, size_t d, int32_t* out) {
    dot_i8_128(q, rows, n, d, out, dp_i8);
}

inline float tail_f32(const float* q, const float* r, size_t j, size_t d) {
    float acc = 0.0f;
    for (; j < d; ++j) acc += q[j] * r[j];
    return acc;
}

void dot_f32_neon(const float* q, const float* rows, size_t n, size_t d, float* out) {
    const size_t dv = d & ~size_t(3);
    for (size_t i = 0; i < n; ++i) {
        const float* r = rows + i * d;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
        size_t j = 0;
        for (; j + 16 <= dv; j += 16) {
            a0 = vfmaq_f32(a0, vld1q_f32(r + j), vld1q_f32(q + j));
            a1 = vfmaq_f32(a1, vld1q_f32(r + j + 4), vld1q_f32(q + j + 4));
            a2 = vfmaq_f32(a2, vld1q_f32(r + j + 8), vld1q_f32(q + j + 8));
            a3 = vfmaq_f32(a3, vld1q_f32(r + j + 12), vld1q_f32(q + j + 12));
        }
        for (; j < dv; j += 4) a0 = vfmaq_f32(a0, vld1q_f32(r + j), vld1q_f32(q + j));
        out[i] = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3))) + tail_f32(q, r, dv, d);
    }
}

uint64_t read_probe_neon(const uint8_t* buf, size_t nbytes) {
    uint8x16_t a = vdupq_n_u8(0), b = a, c = a, e = a;
    size_t i = 0;
    for (; i + 64 <= nbytes; i += 64) {
        a = veorq_u8(a, vld1q_u8(buf + i));
        b = veorq_u8(b, vld1q_u8(buf + i + 16));
        c = veorq_u8(c, vld1q_u8(buf + i + 32));
        e = veorq_u8(e, vld1q_u8(buf + i + 48));
    }
    const uint64x2_t x = vreinterpretq_u64_u8(veorq_u8(veorq_u8(a, b), veorq_u8(c, e)));
    uint64_t r = vgetq_lane_u64(x, 0) ^ vgetq_lane_u64(x, 1);
    for (; i < nbytes; ++i) r ^= buf[i];
    return r;
}

const IsaKernels kNeon = {"neon", dot_i8_neon, dot_f32_neon, read_probe_neon};

}  // namespace

const IsaKernels* neon_kernels() { return &kNeon; }
#else
const IsaKernels* neon_kernels() { return nullptr; }
#endif

}  // namespace shelfrank
