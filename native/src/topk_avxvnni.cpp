// AVX-VNNI (x86-64, VEX-encoded 256-bit vpdpbusd: Alder Lake, Zen 5 and later, without AVX-512).
// int8: vpdpbusd on |x| (u8) × sign(x)·q (s8 via vpsignb), row loop shared with AVX2 (x86_256.hpp).
// fp32 and the read probe reuse the AVX2 kernels: VNNI adds nothing to float dots.
// The project header (and the standard headers it pulls in) comes before the target pragma so
// that no inline library code is compiled for this ISA.
#include "shelfrank/topk.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma,avxvnni")
#include "x86_256.hpp"
#endif


namespace shelfrank {

#if defined(__x86_64__) || defined(_M_X64)
namespace {

inline __m256i dp_i8(__m256i acc, __m256i x, __m256i q) {
    return _mm256_dpbusd_avx_epi32(acc, _mm256_abs_epi8(x), _mm256_sign_epi8(q, x));
}

void dot_i8_avxvnni(const int8_t* q, const int8_t* rows, size_t n, size_t d, int32_t* out) {
    dot_i8_256(q, rows, n, d, out, dp_i8);
}

}  // namespace

const IsaKernels* avxvnni_kernels() {
    static const IsaKernels k = {"avxvnni", dot_i8_avxvnni, avx2_kernels()->dot_f32,
                                 avx2_kernels()->read_probe};
    return &k;
}
#else
const IsaKernels* avxvnni_kernels() { return nullptr; }
#endif

}  // namespace shelfrank
