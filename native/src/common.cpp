// Shared scalar routines used by every ISA path: query/row quantisation and the int32-dot to
// score conversion. This file is compiled with -ffp-contract=off (CMakeLists.txt) so that no
// compiler fuses a multiply into an add here: aarch64 gcc would otherwise emit fmadd and the
// int8 scores would differ between x86 and ARM.
#include <cmath>
#include <cstring>

#include "shelfrank/topk.hpp"

namespace shelfrank {

float quantize_vector(const float* x, size_t d, int8_t* out) {
    float amax = 0.0f;
    for (size_t j = 0; j < d; ++j) {
        const float a = std::fabs(x[j]);
        if (a > amax) amax = a;
    }
    if (!(amax > 0.0f) || !std::isfinite(amax)) {
        std::memset(out, 0, d);
        return 0.0f;
    }
    const float scale = amax / 127.0f;
    for (size_t j = 0; j < d; ++j) {
        float v = std::round(x[j] / scale);  // half away from zero: no rounding-mode dependence
        if (v != v) v = 0.0f;                 // NaN (callers reject it; never UB in the cast)
        if (v > 127.0f) v = 127.0f;
        if (v < -127.0f) v = -127.0f;
        out[j] = static_cast<int8_t>(v);
    }
    return scale;
}

void scores_from_dots(const int32_t* dots, const float* scales, float qscale, size_t n,
                      float* out) {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(dots[i]) * (scales[i] * qscale);
}

}  // namespace shelfrank
