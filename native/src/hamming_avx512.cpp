// AVX-512 VPOPCNTDQ scan (x86-64: Ice Lake, Sapphire Rapids, Zen 4 and later; needs F, BW and
// VPOPCNTDQ, checked by dispatch): out[i] = popcount(q XOR code_i) over `nbytes` bytes.
// Instructions: vpxorq + vpopcntq on 64-byte chunks, one row at a time (in-order loads).
// Accumulator: one 8 × uint64 vector per row, reduced once per row; tail: a masked zero-filling
// byte load (vmovdqu8 with a k-mask: masked-off bytes are never read, so no fault past the end),
// the query tail loaded with the same mask. At d = 384 a row is 48 bytes: one masked load each.
// The project header (and the standard headers it pulls in) comes before the target pragma so
// that no inline library code is compiled for this ISA.
#include "shelfrank/topk.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512bw,avx512vpopcntdq,avx2,popcnt")
#include <immintrin.h>
#endif

namespace shelfrank {

#if defined(__x86_64__) || defined(_M_X64)
namespace {

// Sum of the eight uint64 lanes (each ≤ 512 here, so the 256/128-bit folds never overflow).
inline uint32_t hsum(__m512i v) {
    const __m256i h = _mm256_add_epi64(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    return uint32_t(_mm_cvtsi128_si64(_mm_add_epi64(s, _mm_unpackhi_epi64(s, s))));
}

void hamming_vpopcntdq(const uint8_t* q, const uint8_t* codes, size_t n, size_t nbytes, uint32_t* out) {
    const size_t full = nbytes / 64, rem = nbytes % 64;
    const __mmask64 tm = rem ? (~__mmask64(0) >> (64 - rem)) : 0;
    const __m512i qt = _mm512_maskz_loadu_epi8(tm, q + 64 * full);
    if (full == 0) {  // rows of at most 64 bytes (d ≤ 512): one masked load per row
        size_t i = 0;
        for (; i + 2 <= n; i += 2) {  // two rows per step: independent chains
            const __m512i a = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi8(tm, codes + i * nbytes), qt));
            const __m512i b =
                _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi8(tm, codes + (i + 1) * nbytes), qt));
            out[i] = hsum(a);
            out[i + 1] = hsum(b);
        }
        if (i < n) out[i] = hsum(_mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi8(tm, codes + i * nbytes), qt)));
        return;
    }
    for (size_t i = 0; i < n; ++i) {
        const uint8_t* c = codes + i * nbytes;
        __m512i acc = _mm512_setzero_si512();
        for (size_t j = 0; j < full; ++j)
            acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(c + 64 * j),
                                                                             _mm512_loadu_si512(q + 64 * j))));
        if (rem)
            acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi8(tm, c + 64 * full), qt)));
        out[i] = hsum(acc);
    }
}

const HammingKernel kVpopcntdq = {"avx512-vpopcntdq", hamming_vpopcntdq};

}  // namespace

const HammingKernel* avx512_hamming() { return &kVpopcntdq; }
#else
const HammingKernel* avx512_hamming() { return nullptr; }
#endif

}  // namespace shelfrank
