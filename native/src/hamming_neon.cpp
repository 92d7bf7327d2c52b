// NEON popcount scan (aarch64 baseline: Cortex-A72 and later; the neon and neon_dot tables share
// it, no dotprod needed): out[i] = popcount(q XOR code_i) over `nbytes` bytes.
// Instructions: veorq_u8 + vcntq_u8 (per-byte counts), summed in uint8 lanes with vaddq_u8 (a byte
// lane gains at most 8 per 16-byte chunk, so 31 chunks fit before it is widened into uint32 lanes
// with vpaddlq_u8 + vpadalq_u16), one row at a time (in-order loads); vaddvq_u32 reduces once per row. Tail: an 8-byte chunk with
// vcnt_u8, then the last nbytes % 8 bytes copied into a zeroed word (no read past the row).
#include <cstring>

#include "shelfrank/topk.hpp"

#if defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace shelfrank {

#if defined(__aarch64__)
namespace {

constexpr size_t kPrefetch = 2048;  // bytes ahead of the row being counted, as in the x86 scans

void hamming_neon_cnt(const uint8_t* q, const uint8_t* codes, size_t n, size_t nbytes, uint32_t* out) {
    const size_t full = nbytes / 16, rem = nbytes % 16, half = rem / 8, rest = rem % 8;
    const uint8_t* qtail = q + 16 * full;
    uint64_t qr = 0;
    std::memcpy(&qr, qtail + 8 * half, rest);
    for (size_t i = 0; i < n; ++i) {
        const uint8_t* c = codes + i * nbytes;
        __builtin_prefetch(c + kPrefetch);  // a hint: past the end of the codes it is dropped, never faults
        uint32x4_t wide = vdupq_n_u32(0);
        uint8x16_t acc = vdupq_n_u8(0);
        size_t j = 0, run = 0;
        for (; j < full; ++j) {
            acc = vaddq_u8(acc, vcntq_u8(veorq_u8(vld1q_u8(c + 16 * j), vld1q_u8(q + 16 * j))));
            if (++run == 31) {
                wide = vpadalq_u16(wide, vpaddlq_u8(acc));
                acc = vdupq_n_u8(0);
                run = 0;
            }
        }
        wide = vpadalq_u16(wide, vpaddlq_u8(acc));
        uint32_t total = vaddvq_u32(wide);
        if (half) total += vaddv_u8(vcnt_u8(veor_u8(vld1_u8(c + 16 * full), vld1_u8(qtail))));
        if (rest) {
            uint64_t t = 0;
            std::memcpy(&t, c + 16 * full + 8 * half, rest);
            total += vaddv_u8(vcnt_u8(vcreate_u8(t ^ qr)));
        }
        out[i] = total;
    }
}

const HammingKernel kNeonCnt = {"neon-cnt", hamming_neon_cnt};

}  // namespace

const HammingKernel* neon_hamming() { return &kNeonCnt; }
#else
const HammingKernel* neon_hamming() { return nullptr; }
#endif

}  // namespace shelfrank
