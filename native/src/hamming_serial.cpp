// Serial popcount scan, always built: out[i] = popcount(q XOR code_i) over `nbytes` bytes.
// Instructions: none beyond the baseline; the popcount is the portable SWAR bit count (pairs,
// nibbles, then one multiply sums the eight byte counts), so no libgcc call on an x86-64 baseline
// without POPCNT. Accumulator: one uint32 per row, eight bytes at a time; tail: the last
// nbytes % 8 bytes are copied into a zeroed word (the query tail the same way), so no read past
// the row. On aarch64 the compiler may vectorise this loop; it stays the portable reference.
#include <cstring>

#include "shelfrank/topk.hpp"

namespace shelfrank {
namespace {

inline uint64_t load_u64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline uint64_t load_tail(const uint8_t* p, size_t n) {
    uint64_t v = 0;
    std::memcpy(&v, p, n);
    return v;
}

inline uint32_t popcount64(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    return uint32_t((x * 0x0101010101010101ull) >> 56);
}

void hamming_serial(const uint8_t* q, const uint8_t* codes, size_t n, size_t nbytes, uint32_t* out) {
    const size_t words = nbytes / 8, rem = nbytes % 8;
    const uint64_t qt = load_tail(q + 8 * words, rem);
    for (size_t i = 0; i < n; ++i) {
        const uint8_t* c = codes + i * nbytes;
        uint32_t acc = 0;
        for (size_t w = 0; w < words; ++w) acc += popcount64(load_u64(c + 8 * w) ^ load_u64(q + 8 * w));
        if (rem) acc += popcount64(load_tail(c + 8 * words, rem) ^ qt);
        out[i] = acc;
    }
}

}  // namespace

const HammingKernel kSerialHamming = {"scalar", hamming_serial};

}  // namespace shelfrank
