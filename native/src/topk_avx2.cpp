// AVX2 + FMA (x86-64, Haswell and later).
// int8: |x| as u8 times sign(x)·q as s8 with vpmaddubsw (pairs never saturate: q ∈ [-127, 127],
//       |x| ≤ 128, so |pair| ≤ 32512), widened to int32 with vpmaddwd against ones; the row loop
//       (one row at a time, scalar tail) is shared with AVX-VNNI in x86_256.hpp.
// fp32: vfmadd231ps into four 8-lane accumulators, one row at a time (in-order loads), scalar tail.
// The project header (and the standard headers it pulls in) comes before the target pragma so
// that no inline library code is compiled for this ISA.
#include "shelfrank/topk.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma")
#include "x86_256.hpp"
#endif


namespace shelfrank {

#if defined(__x86_64__) || defined(_M_X64)
namespace {

inline __m256i dp_i8(__m256i acc, __m256i x, __m256i q) {
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(q, x));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

inline float hsum_f32(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

void dot_i8_avx2(const int8_t* q, const int8_t* rows, size_t n, size_t d, int32_t* out) {
    dot_i8_256(q, rows, n, d, out, dp_i8);
}

float tail_f32(const float* q, const float* r, size_t j, size_t d) {
    float acc = 0.0f;
    for (; j < d; ++j) acc += q[j] * r[j];
    return acc;
}

void dot_f32_avx2(const float* q, const float* rows, size_t n, size_t d, float* out) {
    const size_t dv = d & ~size_t(7);
    for (size_t i = 0; i < n; ++i) {
        const float* r = rows + i * d;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        size_t j = 0;
        for (; j + 32 <= dv; j += 32) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r + j), _mm256_loadu_ps(q + j), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r + j + 8), _mm256_loadu_ps(q + j + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r + j + 16), _mm256_loadu_ps(q + j + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r + j + 24), _mm256_loadu_ps(q + j + 24), a3);
        }
        for (; j < dv; j += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r + j), _mm256_loadu_ps(q + j), a0);
        out[i] = hsum_f32(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) + tail_f32(q, r, dv, d);
    }
}

uint64_t read_probe_avx2(const uint8_t* buf, size_t nbytes) {
    __m256i a = _mm256_setzero_si256(), b = a, c = a, e = a;
    size_t i = 0;
    for (; i + 128 <= nbytes; i += 128) {
        a = _mm256_xor_si256(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buf + i)));
        b = _mm256_xor_si256(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buf + i + 32)));
        c = _mm256_xor_si256(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buf + i + 64)));
        e = _mm256_xor_si256(e, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buf + i + 96)));
    }
    const __m256i x = _mm256_xor_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(c, e));
    uint64_t r = uint64_t(_mm256_extract_epi64(x, 0)) ^ uint64_t(_mm256_extract_epi64(x, 1)) ^
                 uint64_t(_mm256_extract_epi64(x, 2)) ^ uint64_t(_mm256_extract_epi64(x, 3));
    for (; i < nbytes; ++i) r ^= buf[i];
    return r;
}

const IsaKernels kAvx2 = {"avx2", dot_i8_avx2, dot_f32_avx2, read_probe_avx2};

}  // namespace

const IsaKernels* avx2_kernels() { return &kAvx2; }
#else
const IsaKernels* avx2_kernels() { return nullptr; }
#endif

}  // namespace shelfrank
