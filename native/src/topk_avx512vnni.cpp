// AVX-512 VNNI (x86-64: Ice Lake, Sapphire Rapids, Zen 4 and later; needs F, BW, VL, VNNI).
// int8: vpdpbusd multiplies |x| (u8) by sign(x)·q (s8, negated with a byte mask from vpmovb2m)
//       and accumulates four products per int32 lane without saturation; four rows per pass share
//       each 64-byte query load; the row tail uses masked zero-filling loads, so no scalar tail.
// fp32: vfmadd231ps over 16 lanes, masked tail, four rows per pass.
// The project header (and the standard headers it pulls in) comes before the target pragma so
// that no inline library code is compiled for this ISA.
#include "shelfrank/topk.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")
#include <immintrin.h>
#endif


namespace shelfrank {

#if defined(__x86_64__) || defined(_M_X64)
namespace {

inline __m512i dp_i8(__m512i acc, __m512i x, __m512i q) {
    const __mmask64 neg = _mm512_movepi8_mask(x);
    const __m512i sq = _mm512_mask_sub_epi8(q, neg, _mm512_setzero_si512(), q);
    return _mm512_dpbusd_epi32(acc, _mm512_abs_epi8(x), sq);
}

inline __m512i ld(const int8_t* p) { return _mm512_loadu_si512(p); }
inline __m512i ldm(const int8_t* p, __mmask64 m) { return _mm512_maskz_loadu_epi8(m, p); }

void dot_i8_avx512vnni(const int8_t* q, const int8_t* rows, size_t n, size_t d, int32_t* out) {
    const size_t dv = d & ~size_t(63);
    const size_t rem = d - dv;
    const __mmask64 tm = rem ? (~__mmask64(0) >> (64 - rem)) : 0;
    const __m512i qt = ldm(q + dv, tm);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const int8_t* r0 = rows + i * d;
        const int8_t* r1 = r0 + d;
        const int8_t* r2 = r1 + d;
        const int8_t* r3 = r2 + d;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t j = 0; j < dv; j += 64) {
            const __m512i qv = ld(q + j);
            a0 = dp_i8(a0, ld(r0 + j), qv);
            a1 = dp_i8(a1, ld(r1 + j), qv);
            a2 = dp_i8(a2, ld(r2 + j), qv);
            a3 = dp_i8(a3, ld(r3 + j), qv);
        }
        if (rem) {
            a0 = dp_i8(a0, ldm(r0 + dv, tm), qt);
            a1 = dp_i8(a1, ldm(r1 + dv, tm), qt);
            a2 = dp_i8(a2, ldm(r2 + dv, tm), qt);
            a3 = dp_i8(a3, ldm(r3 + dv, tm), qt);
        }
        out[i] = _mm512_reduce_add_epi32(a0);
        out[i + 1] = _mm512_reduce_add_epi32(a1);
        out[i + 2] = _mm512_reduce_add_epi32(a2);
        out[i + 3] = _mm512_reduce_add_epi32(a3);
    }
    for (; i < n; ++i) {
        const int8_t* r = rows + i * d;
        __m512i a = _mm512_setzero_si512();
        for (size_t j = 0; j < dv; j += 64) a = dp_i8(a, ld(r + j), ld(q + j));
        if (rem) a = dp_i8(a, ldm(r + dv, tm), qt);
        out[i] = _mm512_reduce_add_epi32(a);
    }
}

void dot_f32_avx512(const float* q, const float* rows, size_t n, size_t d, float* out) {
    const size_t dv = d & ~size_t(15);
    const size_t rem = d - dv;
    const __mmask16 tm = static_cast<__mmask16>((1u << rem) - 1u);
    const __m512 qt = _mm512_maskz_loadu_ps(tm, q + dv);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float* r0 = rows + i * d;
        const float* r1 = r0 + d;
        const float* r2 = r1 + d;
        const float* r3 = r2 + d;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t j = 0; j < dv; j += 16) {
            const __m512 qv = _mm512_loadu_ps(q + j);
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r0 + j), qv, a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(r1 + j), qv, a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(r2 + j), qv, a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(r3 + j), qv, a3);
        }
        if (rem) {
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, r0 + dv), qt, a0);
            a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, r1 + dv), qt, a1);
            a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, r2 + dv), qt, a2);
            a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, r3 + dv), qt, a3);
        }
        out[i] = _mm512_reduce_add_ps(a0);
        out[i + 1] = _mm512_reduce_add_ps(a1);
        out[i + 2] = _mm512_reduce_add_ps(a2);
        out[i + 3] = _mm512_reduce_add_ps(a3);
    }
    for (; i < n; ++i) {
        const float* r = rows + i * d;
        __m512 a = _mm512_setzero_ps();
        for (size_t j = 0; j < dv; j += 16)
            a = _mm512_fmadd_ps(_mm512_loadu_ps(r + j), _mm512_loadu_ps(q + j), a);
        if (rem) a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, r + dv), qt, a);
        out[i] = _mm512_reduce_add_ps(a);
    }
}

uint64_t read_probe_avx512(const uint8_t* buf, size_t nbytes) {
    __m512i a = _mm512_setzero_si512(), b = a, c = a, e = a;
    size_t i = 0;
    for (; i + 256 <= nbytes; i += 256) {
        a = _mm512_xor_si512(a, _mm512_loadu_si512(buf + i));
        b = _mm512_xor_si512(b, _mm512_loadu_si512(buf + i + 64));
        c = _mm512_xor_si512(c, _mm512_loadu_si512(buf + i + 128));
        e = _mm512_xor_si512(e, _mm512_loadu_si512(buf + i + 192));
    }
    const __m512i x = _mm512_xor_si512(_mm512_xor_si512(a, b), _mm512_xor_si512(c, e));
    uint64_t r = static_cast<uint64_t>(_mm512_reduce_or_epi64(x));
    for (; i < nbytes; ++i) r ^= buf[i];
    return r;
}

const IsaKernels kAvx512Vnni = {"avx512vnni", dot_i8_avx512vnni, dot_f32_avx512, read_probe_avx512};

}  // namespace

const IsaKernels* avx512vnni_kernels() { return &kAvx512Vnni; }
#else
const IsaKernels* avx512vnni_kernels() { return nullptr; }
#endif

}  // namespace shelfrank
