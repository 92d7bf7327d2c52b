// AVX-512 VPOPCNTDQ scan (x86-64: Ice Lake, Sapphire Rapids, Zen 4 and later; needs F, BW and
// VPOPCNTDQ, checked by dispatch): out[i] = popcount(q XOR code_i) over `nbytes` bytes.
// Instructions: vpxorq + vpopcntq on 64-byte chunks, rows in order (in-order loads).
// Accumulator: one 8 × uint64 vector per row; eight rows are reduced together by a transpose-add
// tree (vpunpck{l,h}qdq, vshufi64x2, vpmovqd); tail rows one by one. A software prefetch runs 2 KiB
// ahead (measured: without it the scan reached ~60% of the read roofline, with it 80-95%). Row tail: a masked zero-filling
// byte load (vmovdqu8 with a k-mask: masked-off bytes are never read, so no fault past the end),
// the query tail loaded with the same mask. At d = 384 a row is 48 bytes: one masked load each.
// The project header (and the standard headers it pulls in) comes before the target pragma so
// that no inline library code is compiled for this ISA.
#include "shelfrank/topk.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512bw,avx512vpopcntdq,avx2,popcnt")
#include <immintrin.h>
// GCC 12's unpack/shuffle intrinsics pass _mm512_undefined_epi32() as the merge source of an
// all-ones mask; -Wmaybe-uninitialized flags that false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace shelfrank {

#if defined(__x86_64__) || defined(_M_X64)
namespace {

// Per-row popcounts (8 × uint64 partial counts each) of rows i..i+7 reduced together: out[r] = sum
// of v[r]'s lanes. A transpose-add tree (unpack, then 128-bit lane shuffles) costs 15 operations for
// eight rows, where eight separate horizontal sums would cost about 50.
inline void reduce8(const __m512i v[8], uint32_t* out) {
    __m512i t[4];
    for (int j = 0; j < 4; ++j)  // lane L of t[j]: [v[2j] pair sum, v[2j+1] pair sum]
        t[j] = _mm512_add_epi64(_mm512_unpacklo_epi64(v[2 * j], v[2 * j + 1]),
                                _mm512_unpackhi_epi64(v[2 * j], v[2 * j + 1]));
    __m512i s[2];
    for (int j = 0; j < 2; ++j)  // lanes: [rows 4j,4j+1 over L0+L1 | over L2+L3 | rows 4j+2,4j+3 ...]
        s[j] = _mm512_add_epi64(_mm512_shuffle_i64x2(t[2 * j], t[2 * j + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_i64x2(t[2 * j], t[2 * j + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i r = _mm512_add_epi64(_mm512_shuffle_i64x2(s[0], s[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                       _mm512_shuffle_i64x2(s[0], s[1], _MM_SHUFFLE(3, 1, 3, 1)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi64_epi32(r));
}

// Lanes of one row's partial counts.
inline __m512i row_counts(const uint8_t* c, const uint8_t* q, size_t full, __mmask64 tm, __m512i qt) {
    __m512i acc = _mm512_setzero_si512();
    for (size_t j = 0; j < full; ++j)
        acc = _mm512_add_epi64(
            acc, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(c + 64 * j), _mm512_loadu_si512(q + 64 * j))));
    if (tm) acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_maskz_loadu_epi8(tm, c + 64 * full), qt)));
    return acc;
}

constexpr size_t kPrefetch = 2048;  // bytes ahead of the rows being counted

inline uint32_t hsum(__m512i v) { return uint32_t(_mm512_reduce_add_epi64(v)); }

void hamming_vpopcntdq(const uint8_t* q, const uint8_t* codes, size_t n, size_t nbytes, uint32_t* out) {
    const size_t full = nbytes / 64, rem = nbytes % 64;
    const __mmask64 tm = rem ? (~__mmask64(0) >> (64 - rem)) : 0;
    const __m512i qt = _mm512_maskz_loadu_epi8(tm, q + 64 * full);
    size_t i = 0;
    __m512i v[8];
    const uint8_t* end = codes + n * nbytes;
    for (; i + 8 <= n; i += 8) {
        const uint8_t* blk = codes + i * nbytes;
        for (const uint8_t* pf = blk + kPrefetch; pf < blk + kPrefetch + 8 * nbytes && pf < end; pf += 64)
            _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T0);
        for (int r = 0; r < 8; ++r) v[r] = row_counts(codes + (i + size_t(r)) * nbytes, q, full, tm, qt);
        reduce8(v, out + i);
    }
    for (; i < n; ++i) out[i] = hsum(row_counts(codes + i * nbytes, q, full, tm, qt));
}

const HammingKernel kVpopcntdq = {"avx512-vpopcntdq", hamming_vpopcntdq};

}  // namespace

const HammingKernel* avx512_hamming() { return &kVpopcntdq; }
#else
const HammingKernel* avx512_hamming() { return nullptr; }
#endif

}  // namespace shelfrank
