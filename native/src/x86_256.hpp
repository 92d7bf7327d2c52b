// Shared pieces of the 256-bit int8 kernels (AVX2 and AVX-VNNI differ only in the multiply-add).
// Include after the file's `#pragma GCC target`. Everything here has internal linkage on
// purpose: an inline function with external linkage compiled under two different targets could
// be merged by the linker into the copy with the newer instructions, which would then trap on a
// CPU that only has the older ones.
#pragma once
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace shelfrank {
namespace {

inline int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

inline __m256i ld256(const int8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

inline int32_t tail_i8(const int8_t* q, const int8_t* r, size_t j, size_t d) {
    int32_t acc = 0;
    for (; j < d; ++j) acc += int32_t(q[j]) * int32_t(r[j]);
    return acc;
}

// out[i] = dot(q, row i); `dp(acc, x, q)` accumulates 32 signed byte products into 8 int32 lanes.
// Four rows per pass share each query load; the row tail (< 32 bytes) is scalar.
template <class Dp>
inline void dot_i8_256(const int8_t* q, const int8_t* rows, size_t n, size_t d, int32_t* out,
                       Dp dp) {
    const size_t dv = d & ~size_t(31);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const int8_t* r0 = rows + i * d;
        const int8_t* r1 = r0 + d;
        const int8_t* r2 = r1 + d;
        const int8_t* r3 = r2 + d;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t j = 0; j < dv; j += 32) {
            const __m256i qv = ld256(q + j);
            a0 = dp(a0, ld256(r0 + j), qv);
            a1 = dp(a1, ld256(r1 + j), qv);
            a2 = dp(a2, ld256(r2 + j), qv);
            a3 = dp(a3, ld256(r3 + j), qv);
        }
        out[i] = hsum_i32(a0) + tail_i8(q, r0, dv, d);
        out[i + 1] = hsum_i32(a1) + tail_i8(q, r1, dv, d);
        out[i + 2] = hsum_i32(a2) + tail_i8(q, r2, dv, d);
        out[i + 3] = hsum_i32(a3) + tail_i8(q, r3, dv, d);
    }
    for (; i < n; ++i) {
        const int8_t* r = rows + i * d;
        __m256i a = _mm256_setzero_si256();
        for (size_t j = 0; j < dv; j += 32) a = dp(a, ld256(r + j), ld256(q + j));
        out[i] = hsum_i32(a) + tail_i8(q, r, dv, d);
    }
}

}  // namespace
}  // namespace shelfrank
