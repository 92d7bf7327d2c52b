// Two-pass search shared by every ISA. First pass: each query's sign code (bit j = q_j > mean_j)
// against every row's code with the ISA's popcount scan, in cache-sized blocks (a block of codes
// is read once for the whole batch), masked rows skipped. The r best rows by (distance asc, row
// asc) are kept with a bounded selector: candidates are appended in row order while their
// distance is within a threshold; when 2r accumulate, a histogram of the d+1 possible distances
// finds the exact r-th distance, the list is cut back to exactly the r best (ties to the lower row)
// and the threshold drops below the r-th distance, so at most 2r + a block are ever held. Each
// thread selects over its own range; the merged lists are cut the same way, so the result does
// not depend on the thread count. Second pass: the candidates (in row order, so a memory-mapped
// catalog is read page by page, only where candidates lie) are scored with the same dot kernel
// and the same score formula as topk_i8 / topk_f32, giving the same bits for those rows.
// Compiled with -ffp-contract=off (CMakeLists.txt): the codes compare a float product and must
// not depend on the compiler's contraction choices.
#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "shelfrank/topk.hpp"
#include "topk_internal.hpp"

namespace shelfrank {
namespace {

struct Cand {
    uint32_t dist;
    int64_t id;
};

// Cuts `c` (in row order) to its `r` best by (dist, row), keeping row order; `hist` is scratch of
// d+1 counts. Returns the largest distance kept (the r-th), or -1 when nothing is kept.
int64_t keep_best(std::vector<Cand>& c, size_t r, std::vector<uint32_t>& hist) {
    if (c.empty() || r == 0) {
        c.clear();
        return -1;
    }
    std::fill(hist.begin(), hist.end(), 0u);
    for (const Cand& x : c) ++hist[x.dist];
    size_t below = 0, t = 0;
    for (; t < hist.size(); ++t) {
        if (below + hist[t] >= r) break;
        below += hist[t];
    }
    if (t == hist.size()) return int64_t(hist.size()) - 1;  // fewer than r: keep them all
    size_t ties = r - below;  // rows at distance t still kept, the lowest rows first
    size_t o = 0;
    for (const Cand& x : c) {
        if (x.dist < t || (x.dist == t && ties > 0)) {
            if (x.dist == t) --ties;
            c[o++] = x;
        }
    }
    c.resize(o);
    return int64_t(t);
}

// The r best rows seen so far, for one query and one thread's range.
class Selector {
public:
    Selector(size_t r, size_t max_dist) : r_(r), thr_(int64_t(max_dist)), hist_(max_dist + 1) { c_.reserve(limit()); }

    // Rows arrive in increasing order, so once the list was cut to the r best, a later row at
    // the r-th distance loses the tie: only strictly closer rows are kept.
    void offer(const uint32_t* dist, size_t n, int64_t base, const uint8_t* mask) {
        if (thr_ < 0) return;
        // Distances are <= 8 * code bytes, far below 2^31: compared as int32, so the group test
        // below vectorises with the baseline's signed compares (SSE2 pcmpgtd, NEON cmgt).
        const int32_t thr = int32_t(thr_);
        const int32_t* di = reinterpret_cast<const int32_t*>(dist);
        size_t i = 0;
        for (; i + kGroup <= n; i += kGroup) {  // most groups hold no row within the threshold
            int any = 0;
            for (size_t j = 0; j < kGroup; ++j) any |= int(di[i + j] <= thr);
            if (any) take(dist, i, i + kGroup, base, mask, thr);
        }
        take(dist, i, n, base, mask, thr);
        if (c_.size() >= limit()) cut();
    }

    // The r best, in row order.
    std::vector<Cand>& finish() {
        if (c_.size() > r_) cut();
        return c_;
    }

private:
    static constexpr size_t kGroup = 32;

    void take(const uint32_t* dist, size_t b, size_t e, int64_t base, const uint8_t* mask, int32_t thr) {
        for (size_t i = b; i < e; ++i) {
            if (int32_t(dist[i]) > thr || (mask && !mask[i])) continue;
            c_.push_back(Cand{dist[i], base + int64_t(i)});
        }
    }
    size_t limit() const { return 2 * r_ + 64; }
    void cut() {
        const int64_t t = keep_best(c_, r_, hist_);
        if (c_.size() == r_) thr_ = t - 1;
    }

    size_t r_;
    int64_t thr_;
    std::vector<uint32_t> hist_;
    std::vector<Cand> c_;
};

template <class T>
void code_row(const T* x, float scale, bool scaled, const float* mean, size_t d, uint8_t* out) {
    for (size_t b = 0; b * 8 < d; ++b) {
        const size_t end = std::min(d, b * 8 + 8);
        unsigned v = 0;
        for (size_t j = b * 8; j < end; ++j) {
            const float val = scaled ? float(x[j]) * scale : float(x[j]);
            v |= unsigned(val > mean[j]) << (j - b * 8);
        }
        out[b] = uint8_t(v);
    }
}

void check_mean(const float* mean) {
    if (!mean) throw std::invalid_argument("mean must not be null");
}

// First pass for every query: cands[q] = its r best eligible rows, in row order.
std::vector<std::vector<Cand>> first_pass(const float* queries, const uint8_t* codes, const float* mean, size_t r,
                                          const TopkParams& p, const IsaKernels& isa) {
    if (!isa.hamming.fn)
        throw std::invalid_argument(std::string("ISA '") + isa.name + "' has no popcount scan (a table not from dispatch)");
    check_mean(mean);
    const size_t nb = code_bytes(p.d);
    std::vector<uint8_t> qcodes(p.batch * nb);
    for (size_t q = 0; q < p.batch; ++q) code_row(queries + q * p.d, 1.0f, false, mean, p.d, qcodes.data() + q * nb);
    std::vector<std::vector<Cand>> out(p.batch);
    if (r == 0 || p.n == 0) return out;
    const int t = effective_threads(p.threads, p.n);
    const size_t maxd = 8 * nb;  // distances count pad bits too (0 in well-formed codes): never past the histogram
    std::vector<std::vector<Selector>> sel(size_t(t), std::vector<Selector>(p.batch, Selector(r, maxd)));
    const size_t bs = block_rows(nb);
    const HammingFn ham = isa.hamming.fn;
    for_ranges(t, p.n, [&](int w, size_t b, size_t e) {
        std::vector<uint32_t> dist(bs);
        for (size_t row = b; row < e; row += bs) {
            const size_t n = std::min(bs, e - row);
            const uint8_t* m = p.mask ? p.mask + row : nullptr;
            if (none_eligible(m, n)) continue;
            for (size_t q = 0; q < p.batch; ++q) {
                ham(qcodes.data() + q * nb, codes + row * nb, n, nb, dist.data());
                sel[size_t(w)][q].offer(dist.data(), n, int64_t(row), m);
            }
        }
    });
    std::vector<uint32_t> hist(maxd + 1);
    for (size_t q = 0; q < p.batch; ++q) {
        for (int w = 0; w < t; ++w) {
            const std::vector<Cand>& c = sel[size_t(w)][q].finish();
            out[q].insert(out[q].end(), c.begin(), c.end());
        }
        if (out[q].size() > r) keep_best(out[q], r, hist);
    }
    return out;
}

size_t checked_r(size_t r, const TopkParams& p, bool two_pass) {
    if (p.d == 0) throw std::invalid_argument("dimension must be >= 1");
    if (p.batch == 0) throw std::invalid_argument("batch must be >= 1");
    if (r == 0) throw std::invalid_argument("r must be >= 1");
    if (two_pass && r < p.k)
        throw std::invalid_argument("r (" + std::to_string(r) + ") must be >= k (" + std::to_string(p.k) + ")");
    return std::min(r, p.n);
}

template <class Score>
void rescore(const std::vector<Cand>& c, size_t k, Score score, int64_t* out_ids, float* out_scores) {
    std::vector<Hit> hits;
    hits.reserve(c.size());
    std::vector<float> s(c.size());
    score(c, s.data());
    for (size_t i = 0; i < c.size(); ++i)
        if (s[i] == s[i]) hits.push_back(Hit{s[i], c[i].id});  // NaN rows never rank
    const size_t m = std::min(hits.size(), k);
    std::partial_sort(hits.begin(), hits.begin() + std::ptrdiff_t(m), hits.end(), better);
    for (size_t j = 0; j < k; ++j) {
        out_ids[j] = j < m ? hits[j].id : -1;
        out_scores[j] = j < m ? hits[j].score : -std::numeric_limits<float>::infinity();
    }
}

}  // namespace

void binary_codes_f32(const float* rows, size_t n, size_t d, const float* mean, uint8_t* out, int threads,
                      size_t row_stride) {
    if (d == 0) throw std::invalid_argument("dimension must be >= 1");
    check_mean(mean);
    const size_t nb = code_bytes(d), st = row_stride ? row_stride : d;
    for_ranges(effective_threads(threads, n), n, [&](int, size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) code_row(rows + i * st, 1.0f, false, mean, d, out + i * nb);
    });
}

void binary_codes_i8(const int8_t* rows, const float* scales, size_t n, size_t d, const float* mean, uint8_t* out,
                     int threads, size_t row_stride) {
    if (d == 0) throw std::invalid_argument("dimension must be >= 1");
    check_mean(mean);
    const size_t nb = code_bytes(d), st = row_stride ? row_stride : d;
    for_ranges(effective_threads(threads, n), n, [&](int, size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) code_row(rows + i * st, scales[i], true, mean, d, out + i * nb);
    });
}

void hamming_topk(const float* queries, const uint8_t* codes, const float* mean, size_t r, const TopkParams& p,
                  const IsaKernels& isa, int64_t* out_ids, int32_t* out_dist) {
    const size_t rr = checked_r(r, p, false);
    std::vector<std::vector<Cand>> cands = first_pass(queries, codes, mean, rr, p, isa);
    for (size_t q = 0; q < p.batch; ++q) {
        std::vector<Cand>& c = cands[q];
        std::sort(c.begin(), c.end(),
                  [](const Cand& a, const Cand& b) { return a.dist < b.dist || (a.dist == b.dist && a.id < b.id); });
        for (size_t j = 0; j < r; ++j) {
            out_ids[q * r + j] = j < c.size() ? c[j].id : -1;
            out_dist[q * r + j] = j < c.size() ? int32_t(c[j].dist) : -1;
        }
    }
}

void topk_two_pass_i8(const float* queries, const int8_t* rows, const float* scales, const uint8_t* codes,
                      const float* mean, size_t r, const TopkParams& p, const IsaKernels& isa, int64_t* out_ids,
                      float* out_scores) {
    check(p);
    const size_t rr = checked_r(r, p, true);
    std::vector<std::vector<Cand>> cands = first_pass(queries, codes, mean, rr, p, isa);
    const size_t st = row_stride(p);
    std::vector<int8_t> q8(p.d);
    for (size_t q = 0; q < p.batch; ++q) {
        const float qs = quantize_vector(queries + q * p.d, p.d, q8.data());
        auto score = [&](const std::vector<Cand>& c, float* s) {
            std::vector<int32_t> dots(c.size());
            std::vector<float> sc(c.size());
            for (size_t i = 0; i < c.size(); ++i) {
                isa.dot_i8(q8.data(), rows + size_t(c[i].id) * st, 1, p.d, &dots[i]);
                sc[i] = scales[c[i].id];
            }
            scores_from_dots(dots.data(), sc.data(), qs, c.size(), s);
        };
        rescore(cands[q], p.k, score, out_ids + q * p.k, out_scores + q * p.k);
    }
}

void topk_two_pass_f32(const float* queries, const float* rows, const uint8_t* codes, const float* mean, size_t r,
                       const TopkParams& p, const IsaKernels& isa, int64_t* out_ids, float* out_scores) {
    check(p);
    const size_t rr = checked_r(r, p, true);
    std::vector<std::vector<Cand>> cands = first_pass(queries, codes, mean, rr, p, isa);
    const size_t st = row_stride(p);
    for (size_t q = 0; q < p.batch; ++q) {
        const float* qv = queries + q * p.d;
        auto score = [&](const std::vector<Cand>& c, float* s) {
            for (size_t i = 0; i < c.size(); ++i) isa.dot_f32(qv, rows + size_t(c[i].id) * st, 1, p.d, &s[i]);
        };
        rescore(cands[q], p.k, score, out_ids + q * p.k, out_scores + q * p.k);
    }
}

}  // namespace shelfrank
