// Pieces shared by the top-k drivers (topk.cpp, two_pass.cpp): the hit order, the block and
// thread sizing, argument checks and the worker fan-out. Internal linkage: see x86_256.hpp.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "pool.hpp"
#include "shelfrank/topk.hpp"

namespace shelfrank {
namespace {

struct Hit {
    float score;
    int64_t id;
};

inline bool better(const Hit& a, const Hit& b) {
    return a.score > b.score || (a.score == b.score && a.id < b.id);
}

constexpr size_t kBlockBytes = 96 * 1024;  // rows scored per block: stays in L2 across a batch
constexpr size_t kMinRowsPerThread = 8192;  // below this a thread costs more than it saves

inline size_t block_rows(size_t row_bytes) {
    return std::max<size_t>(16, kBlockBytes / std::max<size_t>(row_bytes, 1));
}

inline int effective_threads(int threads, size_t n) {
    if (threads < 1) throw std::invalid_argument("threads must be >= 1");
    const size_t cap = std::max<size_t>(1, n / kMinRowsPerThread);
    return int(std::min<size_t>(size_t(threads), cap));
}

// Elements from one row to the next (TopkParams::row_stride, 0 meaning d).
inline size_t row_stride(const TopkParams& p) { return p.row_stride ? p.row_stride : p.d; }

inline void check(const TopkParams& p) {
    if (p.d == 0) throw std::invalid_argument("dimension must be >= 1");
    if (p.row_stride && p.row_stride < p.d) throw std::invalid_argument("row_stride must be 0 or >= d");
    if (p.k == 0) throw std::invalid_argument("k must be >= 1");
    if (p.batch == 0) throw std::invalid_argument("batch must be >= 1");
}

inline bool none_eligible(const uint8_t* mask, size_t n) {
    if (!mask) return false;
    for (size_t i = 0; i < n; ++i)
        if (mask[i]) return false;
    return true;
}

// Runs work(w, begin, end) for w in [0, t) over contiguous ranges of [0, n) (worker 0 on the
// calling thread, the others on the persistent pool); the first exception a worker throws is
// rethrown here after all have finished.
template <class Work>
void for_ranges(int t, size_t n, Work work) {
    const size_t per = (n + size_t(t) - 1) / size_t(t);
    if (t == 1) {
        work(0, size_t(0), n);
        return;
    }
    parallel_run(t, [&](int w) {
        const size_t b = std::min(n, size_t(w) * per), e = std::min(n, b + per);
        work(w, b, e);
    });
}

}  // namespace
}  // namespace shelfrank
