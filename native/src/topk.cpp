// Top-k driver shared by every ISA: splits the rows into contiguous ranges (one per thread, on a
// persistent pool), scans each range in cache-sized blocks (each block is read from memory once and scored against
// every query of the batch), keeps a bounded heap per query and thread, then merges the heaps.
// The order (score desc, row asc) is total, so the result does not depend on the thread count.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "shelfrank/topk.hpp"
#include "topk_internal.hpp"

namespace shelfrank {
namespace {

// Bounded heap of the k best hits seen so far; front() is the worst kept hit.
class Heap {
public:
    explicit Heap(size_t k) : k_(k) { h_.reserve(k); }

    // Rows arrive in increasing id order within one heap, so an equal score never displaces a
    // kept hit (the kept one has the lower id).
    void offer(const float* s, size_t n, int64_t base, const uint8_t* mask) {
        for (size_t i = 0; i < n; ++i) {
            const float v = s[i];
            if (full_) {
                if (!(v > thr_) || (mask && !mask[i])) continue;
                std::pop_heap(h_.begin(), h_.end(), better);
                h_.back() = Hit{v, base + int64_t(i)};
                std::push_heap(h_.begin(), h_.end(), better);
                thr_ = h_.front().score;
            } else {
                if (v != v || (mask && !mask[i])) continue;  // NaN rows never rank
                h_.push_back(Hit{v, base + int64_t(i)});
                std::push_heap(h_.begin(), h_.end(), better);
                if (h_.size() == k_) {
                    full_ = true;
                    thr_ = h_.front().score;
                }
            }
        }
    }

    const std::vector<Hit>& hits() const { return h_; }

private:
    size_t k_;
    std::vector<Hit> h_;
    bool full_ = false;
    float thr_ = -std::numeric_limits<float>::infinity();
};

// Rows [r, r + nb) as one contiguous block for the dot kernels: the rows themselves when the row
// stride is d, else a copy into a block-sized scratch buffer (each row is read once either way,
// and the block is then scored against the whole batch from cache).
template <class T>
class BlockRows {
public:
    BlockRows(const T* rows, const TopkParams& p, size_t bs) : rows_(rows), d_(p.d), stride_(row_stride(p)) {
        if (stride_ != d_) buf_.resize(bs * d_);
    }
    const T* at(size_t r, size_t nb) {
        if (stride_ == d_) return rows_ + r * d_;
        for (size_t i = 0; i < nb; ++i) std::memcpy(&buf_[i * d_], rows_ + (r + i) * stride_, d_ * sizeof(T));
        return buf_.data();
    }

private:
    const T* rows_;
    size_t d_, stride_;
    std::vector<T> buf_;
};

// Runs `scan(range_begin, range_end, heaps)` on `t` threads and merges the heaps into the output.
template <class Scan>
void run(const TopkParams& p, Scan scan, int64_t* out_ids, float* out_scores) {
    const int t = effective_threads(p.threads, p.n);
    std::vector<std::vector<Heap>> heaps(size_t(t), std::vector<Heap>(p.batch, Heap(p.k)));
    for_ranges(t, p.n, [&](int w, size_t b, size_t e) { scan(b, e, heaps[size_t(w)]); });
    std::vector<Hit> all;
    for (size_t q = 0; q < p.batch; ++q) {
        all.clear();
        for (int w = 0; w < t; ++w) {
            const auto& h = heaps[size_t(w)][q].hits();
            all.insert(all.end(), h.begin(), h.end());
        }
        const size_t m = std::min(all.size(), p.k);
        std::partial_sort(all.begin(), all.begin() + std::ptrdiff_t(m), all.end(), better);
        for (size_t j = 0; j < p.k; ++j) {
            out_ids[q * p.k + j] = j < m ? all[j].id : -1;
            out_scores[q * p.k + j] = j < m ? all[j].score : -std::numeric_limits<float>::infinity();
        }
    }
}

}  // namespace

void topk_f32(const float* queries, const float* rows, const TopkParams& p, const IsaKernels& isa,
              int64_t* out_ids, float* out_scores) {
    check(p);
    const size_t bs = block_rows(p.d * sizeof(float));
    auto scan = [&](size_t b, size_t e, std::vector<Heap>& heaps) {
        std::vector<float> sc(bs);
        BlockRows<float> blk(rows, p, bs);
        for (size_t r = b; r < e; r += bs) {
            const size_t nb = std::min(bs, e - r);
            const uint8_t* m = p.mask ? p.mask + r : nullptr;
            if (none_eligible(m, nb)) continue;
            const float* x = blk.at(r, nb);
            for (size_t q = 0; q < p.batch; ++q) {
                isa.dot_f32(queries + q * p.d, x, nb, p.d, sc.data());
                heaps[q].offer(sc.data(), nb, int64_t(r), m);
            }
        }
    };
    run(p, scan, out_ids, out_scores);
}

void topk_i8(const float* queries, const int8_t* rows, const float* scales, const TopkParams& p,
             const IsaKernels& isa, int64_t* out_ids, float* out_scores) {
    check(p);
    std::vector<int8_t> q8(p.batch * p.d);
    std::vector<float> qscale(p.batch);
    for (size_t q = 0; q < p.batch; ++q)
        qscale[q] = quantize_vector(queries + q * p.d, p.d, q8.data() + q * p.d);
    const size_t bs = block_rows(p.d);
    auto scan = [&](size_t b, size_t e, std::vector<Heap>& heaps) {
        std::vector<int32_t> dots(bs);
        std::vector<float> sc(bs);
        BlockRows<int8_t> blk(rows, p, bs);
        for (size_t r = b; r < e; r += bs) {
            const size_t nb = std::min(bs, e - r);
            const uint8_t* m = p.mask ? p.mask + r : nullptr;
            if (none_eligible(m, nb)) continue;
            const int8_t* x = blk.at(r, nb);
            for (size_t q = 0; q < p.batch; ++q) {
                isa.dot_i8(q8.data() + q * p.d, x, nb, p.d, dots.data());
                scores_from_dots(dots.data(), scales + r, qscale[q], nb, sc.data());
                heaps[q].offer(sc.data(), nb, int64_t(r), m);
            }
        }
    };
    run(p, scan, out_ids, out_scores);
}

double read_bandwidth_gbps(const uint8_t* buf, size_t nbytes, int repeats, int threads) {
    if (repeats < 1 || threads < 1) throw std::invalid_argument("repeats and threads must be >= 1");
    const ReadProbeFn probe = active_kernels().read_probe;
    const size_t per = (nbytes / size_t(threads)) & ~size_t(255);
    double best = 0.0;
    volatile uint64_t sink = 0;
    for (int rep = 0; rep < repeats; ++rep) {
        std::vector<uint64_t> out(size_t(threads), 0);
        const auto t0 = std::chrono::steady_clock::now();
        if (threads == 1) {
            out[0] = probe(buf, nbytes);
        } else {
            std::vector<std::thread> pool;
            for (int w = 0; w < threads; ++w)
                pool.emplace_back([&, w] { out[size_t(w)] = probe(buf + size_t(w) * per, per); });
            for (auto& th : pool) th.join();
        }
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        for (uint64_t v : out) sink = sink ^ v;
        const size_t read = threads == 1 ? nbytes : per * size_t(threads);
        best = std::max(best, double(read) / s / 1e9);
    }
    (void)sink;
    return best;
}

}  // namespace shelfrank
