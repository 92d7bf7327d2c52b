// Serial fallback, always built: int8 dots accumulate exactly in int32; fp32 dots use eight
// independent partial sums (so the compiler can pipeline them without -ffast-math). Row tails
// need no special case. On aarch64 the baseline already includes Advanced SIMD, so the compiler
// may auto-vectorise these loops; they remain the portable reference.
#include <cstring>

#include "shelfrank/topk.hpp"

namespace shelfrank {
namespace {

void dot_i8_serial(const int8_t* q, const int8_t* rows, size_t n, size_t d, int32_t* out) {
    for (size_t i = 0; i < n; ++i) {
        const int8_t* r = rows + i * d;
        int32_t acc = 0;
        for (size_t j = 0; j < d; ++j) acc += int32_t(q[j]) * int32_t(r[j]);
        out[i] = acc;
    }
}

void dot_f32_serial(const float* q, const float* rows, size_t n, size_t d, float* out) {
    for (size_t i = 0; i < n; ++i) {
        const float* r = rows + i * d;
        float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        size_t j = 0;
        for (; j + 8 <= d; j += 8)
            for (int l = 0; l < 8; ++l) s[l] += q[j + l] * r[j + l];
        float acc = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
        for (; j < d; ++j) acc += q[j] * r[j];
        out[i] = acc;
    }
}

// `buf` need not be 8-byte aligned: memcpy is the defined unaligned load (one mov once compiled).
inline uint64_t load_u64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

uint64_t read_probe_serial(const uint8_t* buf, size_t nbytes) {
    const size_t words = nbytes / 8;
    uint64_t a = 0, b = 0, c = 0, e = 0;
    size_t i = 0;
    for (; i + 4 <= words; i += 4) {
        a ^= load_u64(buf + 8 * i);
        b ^= load_u64(buf + 8 * (i + 1));
        c ^= load_u64(buf + 8 * (i + 2));
        e ^= load_u64(buf + 8 * (i + 3));
    }
    for (; i < words; ++i) a ^= load_u64(buf + 8 * i);
    return a ^ b ^ c ^ e;
}

}  // namespace

const IsaKernels kSerialKernels = {"scalar", dot_i8_serial, dot_f32_serial, read_probe_serial};

}  // namespace shelfrank
