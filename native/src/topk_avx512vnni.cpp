// AVX-512 VNNI (x86-64: Ice Lake, Sapphire Rapids, Zen 4 and later; needs F, BW, VL, VNNI).
// int8: vpdpbusd multiplies |x| (u8) by sign(x)·q (s8, negated with a byte mask from vpmovb2m)
//       and accumulates four products per int32 lane without saturation; one row at a time with
//       two accumulators (loads walk memory in order: four rows side by side defeated the
//       prefetcher on Zen 4); the row tail uses a masked zero-filling load, no scalar tail.
// fp32: vfmadd231ps into four 16-lane accumulators, one row at a time, masked tail.
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
    for (size_t i = 0; i < n; ++i) {
        const int8_t* r = rows + i * d;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0;
        size_t j = 0;
        for (; j + 128 <= dv; j += 128) {
            a0 = dp_i8(a0, ld(r + j), ld(q + j));
            a1 = dp_i8(a1, ld(r + j + 64), ld(q + j + 64));
        }
        if (j < dv) a0 = dp_i8(a0, ld(r + j), ld(q + j));
        if (rem) a1 = dp_i8(a1, ldm(r + dv, tm), qt);
        out[i] = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
    }
}

void dot_f32_avx512(const float* q, const float* rows, size_t n, size_t d, float* out) {
    const size_t dv = d & ~size_t(15);
    const size_t rem = d - dv;
    const __mmask16 tm = static_cast<__mmask16>((1u << rem) - 1u);
    const __m512 qt = _mm512_maskz_loadu_ps(tm, q + dv);
    for (size_t i = 0; i < n; ++i) {
        const float* r = rows + i * d;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        size_t j = 0;
        for (; j + 64 <= dv; j += 64) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r + j), _mm512_loadu_ps(q + j), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(r + j + 16), _mm512_loadu_ps(q + j + 16), a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(r + j + 32), _mm512_loadu_ps(q + j + 32), a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(r + j + 48), _mm512_loadu_ps(q + j + 48), a3);
        }
        for (; j < dv; j += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r + j), _mm512_loadu_ps(q + j), a0);
        if (rem) a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tm, r + dv), qt, a1);
        out[i] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
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
