// C++ tests of the native top-k kernel, no framework and no Python: every ISA path this CPU and
// build offer (kernels_for) against references computed here, exact int64 dots for int8 rows and
// double dots for fp32 rows. Built by CMake with SHELFRANK_BUILD_TESTS=ON; run by
// scripts/native_tests.sh natively under ASan+UBSan and cross-built for aarch64 under qemu.
//
//   test_topk [--expect-isa NAME] [--digest] [-v]
//     --expect-isa NAME  fail unless active_isa() == NAME (proves dispatch picked the right path)
//     --digest           print `digest <hex>`: FNV-1a 64 over the int8 top-k ids and score bytes (and
//                        the two-pass codes, ids and score bytes) of a fixed workload from an integer LCG (no <random> distributions: those
//                        differ between standard libraries), to compare x86 and aarch64 bit for bit
//     -v                 print every case, not only failures
// Last line: `N passed, M failed`; exit 0 only when M == 0.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "shelfrank/topk.hpp"

namespace sr = shelfrank;

namespace {

// ---- minimal harness --------------------------------------------------------------------------
int g_passed = 0, g_failed = 0, g_case_fails = 0;
bool g_verbose = false;
std::string g_case;

void fail_at(int line, const char* cond, const std::string& msg) {
    if (++g_case_fails <= 8)
        std::fprintf(stderr, "FAIL [%s] test_topk.cpp:%d: %s  %s\n", g_case.c_str(), line, cond, msg.c_str());
}

#define CHECK(cond, msg)                         \
    do {                                         \
        if (!(cond)) {                           \
            std::ostringstream os_;              \
            os_ << msg; /* NOLINT */             \
            fail_at(__LINE__, #cond, os_.str()); \
        }                                        \
    } while (0)

void run_case(const std::string& name, const std::function<void()>& fn) {
    g_case = name;
    g_case_fails = 0;
    try {
        fn();
    } catch (const std::exception& e) {
        fail_at(0, "unexpected exception", e.what());
    }
    if (g_case_fails) {
        ++g_failed;
        if (g_case_fails > 8)
            std::fprintf(stderr, "FAIL [%s] ... %d failed checks\n", name.c_str(), g_case_fails);
    } else {
        ++g_passed;
        if (g_verbose) std::printf("ok   %s\n", name.c_str());
    }
}

template <class F>
bool throws_invalid(F f, std::string* what = nullptr) {
    try {
        f();
    } catch (const std::invalid_argument& e) {
        if (what) *what = e.what();
        return true;
    }
    return false;
}

uint32_t fbits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

const float kNegInf = -std::numeric_limits<float>::infinity();

// ---- deterministic data: 64-bit LCG (Knuth MMIX constants), integer arithmetic only ------------
struct Lcg {
    uint64_t s;
    explicit Lcg(uint64_t seed) : s(seed * 2862933555777941757ull + 3037000493ull) {}
    uint32_t next() {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        return uint32_t(s >> 32);
    }
    int range(int lo, int hi) { return lo + int(next() % uint32_t(hi - lo + 1)); }  // [lo, hi]
    // Multiples of 1/1024 in [-1, 1]: exact in float, so identical on every platform.
    float unit() { return float(range(-1024, 1024)) / 1024.0f; }
};

enum class MaskKind { none, partial, all_masked, head_masked };
const char* mask_name(MaskKind m) {
    switch (m) {
        case MaskKind::none:
            return "none";
        case MaskKind::partial:
            return "partial";
        case MaskKind::all_masked:
            return "all-masked";
        case MaskKind::head_masked:
            return "head-masked";
    }
    return "?";
}

struct Data {
    size_t n, d, batch;
    std::vector<float> queries;  // batch × d
    std::vector<float> rows;     // n × d, fp32 rows
    std::vector<int8_t> rows8;   // n × d, int8 rows
    std::vector<float> scales;   // n
    std::vector<uint8_t> mask;   // n, empty = no mask
};

// Random rows with duplicates (ties), zero rows, int8 codes including -128, and a zero query as the
// last of a batch of three or more.
Data make_data(uint64_t seed, size_t n, size_t d, size_t batch, MaskKind mk) {
    Lcg g(seed);
    Data x{n, d, batch, {}, {}, {}, {}, {}};
    x.queries.resize(batch * d);
    for (float& v : x.queries) v = g.unit();
    if (batch >= 3) std::fill(x.queries.end() - std::ptrdiff_t(d), x.queries.end(), 0.0f);
    x.rows.resize(n * d);
    x.rows8.resize(n * d);
    x.scales.resize(n);
    for (size_t i = 0; i < n; ++i) {
        float* r = &x.rows[i * d];
        int8_t* r8 = &x.rows8[i * d];
        if (i % 7 == 3) {  // zero row
            std::fill(r, r + d, 0.0f);
            std::fill(r8, r8 + d, int8_t(0));
            x.scales[i] = 0.0f;
            continue;
        }
        if (i % 5 == 4) {  // duplicate of an earlier row: a tie that must go to the lower id
            const size_t src = i - 1 - g.next() % std::min<size_t>(i, 9);
            std::copy(&x.rows[src * d], &x.rows[src * d] + d, r);
            std::copy(&x.rows8[src * d], &x.rows8[src * d] + d, r8);
            x.scales[i] = x.scales[src];
            continue;
        }
        for (size_t j = 0; j < d; ++j) {
            r[j] = g.unit();
            r8[j] = int8_t(g.range(-128, 127));  // -128 is legal in rows (not in queries)
        }
        x.scales[i] = float(g.range(1, 4096)) / 65536.0f;
    }
    switch (mk) {
        case MaskKind::none:
            break;
        case MaskKind::partial:
            x.mask.resize(n);
            for (auto& m : x.mask) m = uint8_t(g.range(0, 9) < 7 ? 1 + g.range(0, 3) : 0);
            break;
        case MaskKind::all_masked:
            x.mask.assign(n, 0);
            break;
        case MaskKind::head_masked:
            x.mask.assign(n, 1);
            for (size_t i = 0; i < n / 2; ++i) x.mask[i] = 0;
            break;
    }
    return x;
}

// ---- references ------------------------------------------------------------------------------
// Exact top-k of given scores: masked and NaN rows excluded, (score desc, id asc), -1/-inf fill.
void ref_topk(const float* s, size_t n, size_t k, const uint8_t* mask, int64_t* ids, float* sc) {
    std::vector<size_t> idx;
    for (size_t i = 0; i < n; ++i)
        if ((!mask || mask[i]) && !std::isnan(s[i])) idx.push_back(i);
    std::sort(idx.begin(), idx.end(),
              [&](size_t a, size_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
    for (size_t j = 0; j < k; ++j) {
        ids[j] = j < idx.size() ? int64_t(idx[j]) : -1;
        sc[j] = j < idx.size() ? s[idx[j]] : kNegInf;
    }
}

int64_t exact_dot(const int8_t* a, const int8_t* b, size_t d) {
    int64_t acc = 0;
    for (size_t j = 0; j < d; ++j) acc += int64_t(a[j]) * int64_t(b[j]);
    return acc;
}

// The documented int8 score: float(dot) * (scale_row * scale_query); two multiplies, nothing to
// contract into an FMA, so this file needs no -ffp-contract=off.
std::vector<float> i8_ref_scores(const int8_t* q8, float qs, const Data& x) {
    std::vector<float> s(x.n);
    for (size_t i = 0; i < x.n; ++i) {
        const int64_t dot = exact_dot(q8, &x.rows8[i * x.d], x.d);
        s[i] = float(int32_t(dot)) * (x.scales[i] * qs);
    }
    return s;
}

struct Result {
    std::vector<int64_t> ids;
    std::vector<float> scores;
};

bool same_bits(const Result& a, const Result& b, std::string* where) {
    if (a.ids.size() != b.ids.size()) {
        *where = "size";
        return false;
    }
    for (size_t j = 0; j < a.ids.size(); ++j)
        if (a.ids[j] != b.ids[j] || fbits(a.scores[j]) != fbits(b.scores[j])) {
            std::ostringstream os;
            os << "slot " << j << ": (" << a.ids[j] << ", " << a.scores[j] << ") vs (" << b.ids[j] << ", "
               << b.scores[j] << ")";
            *where = os.str();
            return false;
        }
    return true;
}

sr::TopkParams params(const Data& x, size_t k, int threads) {
    sr::TopkParams p;
    p.n = x.n;
    p.d = x.d;
    p.k = k;
    p.batch = x.batch;
    p.threads = threads;
    p.mask = x.mask.empty() ? nullptr : x.mask.data();
    return p;
}

Result run_i8(const Data& x, size_t k, int threads, const sr::IsaKernels& isa) {
    Result r{std::vector<int64_t>(x.batch * k, 7), std::vector<float>(x.batch * k, 7.0f)};
    sr::topk_i8(x.queries.data(), x.rows8.data(), x.scales.data(), params(x, k, threads), isa, r.ids.data(),
                r.scores.data());
    return r;
}

Result run_f32(const Data& x, size_t k, int threads, const sr::IsaKernels& isa) {
    Result r{std::vector<int64_t>(x.batch * k, 7), std::vector<float>(x.batch * k, 7.0f)};
    sr::topk_f32(x.queries.data(), x.rows.data(), params(x, k, threads), isa, r.ids.data(), r.scores.data());
    return r;
}

// Invariants every result must satisfy: the fill, the order, unique eligible ids.
void check_shape(const Result& r, const Data& x, size_t k, size_t q) {
    const int64_t* ids = &r.ids[q * k];
    const float* sc = &r.scores[q * k];
    bool filling = false;
    for (size_t j = 0; j < k; ++j) {
        if (ids[j] < 0) {
            filling = true;
            CHECK(ids[j] == -1 && sc[j] == kNegInf,
                  "q" << q << " slot " << j << " fill is (" << ids[j] << ", " << sc[j] << ")");
            continue;
        }
        CHECK(!filling, "q" << q << " hit after fill at slot " << j);
        CHECK(size_t(ids[j]) < x.n, "q" << q << " id " << ids[j] << " out of range");
        if (size_t(ids[j]) >= x.n) continue;
        CHECK(x.mask.empty() || x.mask[size_t(ids[j])], "q" << q << " masked row " << ids[j] << " returned");
        CHECK(!std::isnan(sc[j]), "q" << q << " NaN score returned for row " << ids[j]);
        for (size_t i = 0; i < j; ++i)
            CHECK(ids[i] != ids[j], "q" << q << " row " << ids[j] << " returned twice");
        if (j > 0 && ids[j - 1] >= 0)
            CHECK(sc[j - 1] > sc[j] || (sc[j - 1] == sc[j] && ids[j - 1] < ids[j]),
                  "q" << q << " order broken at slot " << j << ": (" << ids[j - 1] << ", " << sc[j - 1]
                      << ") before (" << ids[j] << ", " << sc[j] << ")");
    }
}

// int8: the exact reference, bit for bit.
void check_i8(const Data& x, size_t k, const sr::IsaKernels& isa, const Result& r) {
    std::vector<int8_t> q8(x.d);
    Result ref{std::vector<int64_t>(x.batch * k), std::vector<float>(x.batch * k)};
    for (size_t q = 0; q < x.batch; ++q) {
        check_shape(r, x, k, q);
        const float qs = sr::quantize_vector(&x.queries[q * x.d], x.d, q8.data());
        const std::vector<float> s = i8_ref_scores(q8.data(), qs, x);
        ref_topk(s.data(), x.n, k, x.mask.empty() ? nullptr : x.mask.data(), &ref.ids[q * k],
                 &ref.scores[q * k]);
    }
    std::string where;
    CHECK(same_bits(r, ref, &where), isa.name << " differs from the exact int8 reference at " << where);
}

// fp32: the kernel's own dots must be within a rigorous rounding bound of the double dot, and the
// result must be the exact top-k of those dots (so ties and thread splits are deterministic).
void check_f32(const Data& x, size_t k, const sr::IsaKernels& isa, const Result& r) {
    std::vector<float> kd(x.n);
    for (size_t q = 0; q < x.batch; ++q) {
        check_shape(r, x, k, q);
        const float* qv = &x.queries[q * x.d];
        isa.dot_f32(qv, x.rows.data(), x.n, x.d, kd.data());
        std::vector<double> ref(x.n), tol(x.n);
        for (size_t i = 0; i < x.n; ++i) {
            double s = 0, a = 0;
            for (size_t j = 0; j < x.d; ++j) {
                const double p = double(qv[j]) * double(x.rows[i * x.d + j]);
                s += p;
                a += std::fabs(p);
            }
            ref[i] = s;
            if (std::isnan(s)) {
                CHECK(std::isnan(kd[i]), isa.name << " dot_f32 row " << i << " with a NaN gave " << kd[i]);
                continue;
            }
            // Any summation order: |err| <= gamma_d * sum|q·r|, gamma_d ~ d·2^-24; doubled for margin.
            tol[i] = 2.0 * double(x.d + 2) * std::ldexp(1.0, -24) * a;
            CHECK(std::fabs(double(kd[i]) - s) <= tol[i],
                  isa.name << " dot_f32 row " << i << " = " << kd[i] << ", double reference " << s);
        }
        std::vector<int64_t> eids(k);
        std::vector<float> esc(k);
        ref_topk(kd.data(), x.n, k, x.mask.empty() ? nullptr : x.mask.data(), eids.data(), esc.data());
        for (size_t j = 0; j < k; ++j)
            CHECK(r.ids[q * k + j] == eids[j] && fbits(r.scores[q * k + j]) == fbits(esc[j]),
                  isa.name << " q" << q << " slot " << j << ": (" << r.ids[q * k + j] << ", "
                           << r.scores[q * k + j] << ") but top-k of its own dots gives (" << eids[j] << ", "
                           << esc[j] << ")");
        // Against the double reference: no skipped eligible row beats the worst kept row by more
        // than the tolerance, and kept rows are in reference order up to the tolerance.
        const int64_t* ids = &r.ids[q * k];
        size_t m = 0;
        while (m < k && ids[m] >= 0) ++m;
        std::vector<char> kept(x.n, 0);
        for (size_t j = 0; j < m; ++j) kept[size_t(ids[j])] = 1;
        for (size_t j = 1; j < m; ++j) {
            const size_t a = size_t(ids[j - 1]), b = size_t(ids[j]);
            CHECK(ref[a] >= ref[b] - tol[a] - tol[b],
                  "q" << q << " rows " << a << ", " << b << " out of reference order");
        }
        if (m > 0) {
            const size_t w = size_t(ids[m - 1]);
            for (size_t i = 0; i < x.n; ++i)
                if (!kept[i] && (x.mask.empty() || x.mask[i]) && !std::isnan(ref[i]))
                    CHECK(ref[i] <= ref[w] + tol[i] + tol[w], "q" << q << " row " << i << " (ref " << ref[i]
                                                                  << ") skipped but beats kept row " << w
                                                                  << " (ref " << ref[w] << ")");
        }
    }
}

// ---- test groups ----------------------------------------------------------------------------
const size_t kDims[] = {1, 3, 7, 15, 16, 17, 31, 33, 63, 64, 65, 97, 384, 768};

struct Shape {
    size_t n, k;
};

// (n, k) pairs: n < k, k == n, n not a multiple of 4/16/64, and a few exact multiples. Fewer rows
// for the wide dimensions keeps a qemu run short while still crossing the driver's row blocks.
std::vector<Shape> shapes_for(size_t d) {
    std::vector<Shape> s = {{1, 5}, {3, 3}, {4, 1}, {13, 4}, {16, 16}, {67, 10}, {64, 7}};
    if (d <= 97) {
        s.push_back({129, 20});
        s.push_back({203, 203});
    } else {
        s.push_back({150, 12});  // d = 384: 2 int8 blocks; d = 768: 5 fp32 blocks
    }
    return s;
}

// The main grid: every dimension × shape, masks and batch sizes rotating, on every ISA, with
// threads 2 and 3 compared to threads 1 and int8 compared across ISAs.
void test_topk_grid(const std::vector<std::string>& isas) {
    uint64_t seed = 1;
    for (size_t d : kDims) {
        const std::vector<Shape> shapes = shapes_for(d);
        for (size_t si = 0; si < shapes.size(); ++si) {
            const Shape sh = shapes[si];
            const MaskKind mk = MaskKind(si % 4);
            const size_t batch = 1 + si % 3;
            const Data x = make_data(seed++, sh.n, d, batch, mk);
            Result i8_first, f32_first;
            std::string first_isa;
            for (const std::string& name : isas) {
                const sr::IsaKernels& isa = sr::kernels_for(name);
                std::ostringstream tag;
                tag << name << " d=" << d << " n=" << sh.n << " k=" << sh.k << " batch=" << batch
                    << " mask=" << mask_name(mk);
                run_case("i8 " + tag.str(), [&] {
                    const Result r = run_i8(x, sh.k, 1, isa);
                    check_i8(x, sh.k, isa, r);
                    for (int t : {2, 3}) {
                        std::string where;
                        CHECK(same_bits(run_i8(x, sh.k, t, isa), r, &where),
                              "threads=" << t << " differs: " << where);
                    }
                    if (first_isa.empty()) {
                        i8_first = r;
                    } else {
                        std::string where;
                        CHECK(same_bits(r, i8_first, &where),
                              "differs from " << first_isa << " at " << where);
                    }
                });
                run_case("f32 " + tag.str(), [&] {
                    const Result r = run_f32(x, sh.k, 1, isa);
                    check_f32(x, sh.k, isa, r);
                    for (int t : {2, 3}) {
                        std::string where;
                        CHECK(same_bits(run_f32(x, sh.k, t, isa), r, &where),
                              "threads=" << t << " differs: " << where);
                    }
                });
                if (first_isa.empty()) first_isa = name;
            }
        }
    }
}

// Direct dot kernels: every row count 0..37 (4-row groups and tails) and every dimension, on
// deliberately misaligned pointers whose last byte ends the allocation (ASan sees any over-read).
void test_dot_kernels(const std::vector<std::string>& isas) {
    for (const std::string& name : isas) {
        const sr::IsaKernels& isa = sr::kernels_for(name);
        run_case(std::string("dot_i8/dot_f32 exact & bounded, misaligned, ") + name, [&] {
            uint64_t seed = 1000;
            for (size_t d : kDims) {
                const size_t n = d >= 384 ? 9 : 37;
                Lcg g(seed++);
                std::vector<int8_t> qbuf(d + 1), rbuf(n * d + 1);
                for (auto& v : qbuf) v = int8_t(g.range(-127, 127));
                for (auto& v : rbuf) v = int8_t(g.range(-128, 127));
                // Extremes: the largest |pair| sums the kernels' 16-bit steps must not saturate.
                for (size_t j = 0; j < d; ++j) {
                    qbuf[1 + j] = (j % 2) ? int8_t(127) : int8_t(-127);
                    rbuf[1 + j] = (j % 2) ? int8_t(127) : int8_t(-128);
                    if (n > 1) rbuf[1 + d + j] = int8_t(-128);
                }
                const int8_t* q = qbuf.data() + 1;
                const int8_t* rows = rbuf.data() + 1;
                std::vector<int32_t> out(n + 1, 12345);
                for (size_t m = 0; m <= n; ++m) {
                    std::fill(out.begin(), out.end(), 12345);
                    isa.dot_i8(q, rows, m, d, out.data());
                    for (size_t i = 0; i < m; ++i)
                        CHECK(int64_t(out[i]) == exact_dot(q, rows + i * d, d),
                              "dot_i8 d=" << d << " n=" << m << " row " << i << ": " << out[i] << " vs exact "
                                          << exact_dot(q, rows + i * d, d));
                    CHECK(out[m] == 12345, "dot_i8 wrote past n=" << m);
                }
                std::vector<float> qf(d + 1), rf(n * d + 1);
                for (auto& v : qf) v = g.unit();
                for (auto& v : rf) v = g.unit();
                std::vector<float> of(n + 1);
                for (size_t m = 0; m <= n; m += (m < 9 ? 1 : 7)) {
                    std::fill(of.begin(), of.end(), 12345.0f);
                    isa.dot_f32(qf.data() + 1, rf.data() + 1, m, d, of.data());
                    for (size_t i = 0; i < m; ++i) {
                        double s = 0, a = 0;
                        for (size_t j = 0; j < d; ++j) {
                            const double p = double(qf[1 + j]) * double(rf[1 + i * d + j]);
                            s += p;
                            a += std::fabs(p);
                        }
                        CHECK(
                            std::fabs(double(of[i]) - s) <= 2.0 * double(d + 2) * std::ldexp(1.0, -24) * a,
                            "dot_f32 d=" << d << " n=" << m << " row " << i << ": " << of[i] << " vs " << s);
                    }
                    CHECK(of[m] == 12345.0f, "dot_f32 wrote past n=" << m);
                }
            }
        });
    }
}

// Hand-made cases whose answer is known without a reference.
void test_semantics(const std::vector<std::string>& isas) {
    for (const std::string& name : isas) {
        const sr::IsaKernels& isa = sr::kernels_for(name);
        run_case("ties go to the lower id, -1/-inf fill, " + name, [&] {
            // 10 identical rows, k = 12, rows 2 and 5 masked: ids 0,1,3,4,6,7,8,9 then fill.
            const size_t n = 10, d = 17, k = 12;
            Data x = make_data(77, n, d, 1, MaskKind::none);
            x.scales[0] = sr::quantize_vector(&x.rows[0], d, &x.rows8[0]);  // int8 row 0 ~ fp32 row 0
            for (size_t i = 1; i < n; ++i) {
                std::copy(&x.rows[0], &x.rows[0] + d, &x.rows[i * d]);
                std::copy(&x.rows8[0], &x.rows8[0] + d, &x.rows8[i * d]);
                x.scales[i] = x.scales[0];
            }
            std::copy(&x.rows[0], &x.rows[0] + d, x.queries.begin());  // positive score
            x.mask.assign(n, 1);
            x.mask[2] = x.mask[5] = 0;
            const int64_t want[k] = {0, 1, 3, 4, 6, 7, 8, 9, -1, -1, -1, -1};
            for (const Result& r : {run_i8(x, k, 1, isa), run_f32(x, k, 1, isa)}) {
                for (size_t j = 0; j < k; ++j) CHECK(r.ids[j] == want[j], "slot " << j << " id " << r.ids[j]);
                for (size_t j = 0; j < 8; ++j)
                    CHECK(fbits(r.scores[j]) == fbits(r.scores[0]) && r.scores[0] > 0, "slot " << j);
                for (size_t j = 8; j < k; ++j)
                    CHECK(r.scores[j] == kNegInf, "slot " << j << " score " << r.scores[j]);
            }
        });
        run_case("zero query scores 0 everywhere, ids ascending, " + name, [&] {
            const size_t n = 23, d = 33, k = 5;
            Data x = make_data(78, n, d, 1, MaskKind::none);
            std::fill(x.queries.begin(), x.queries.end(), 0.0f);
            for (const Result& r : {run_i8(x, k, 1, isa), run_f32(x, k, 1, isa)})
                for (size_t j = 0; j < k; ++j)
                    CHECK(r.ids[j] == int64_t(j) && r.scores[j] == 0.0f,
                          "slot " << j << ": " << r.ids[j] << ", " << r.scores[j]);
        });
        run_case("all masked gives only fill, " + name, [&] {
            Data x = make_data(79, 40, 16, 2, MaskKind::all_masked);
            for (const Result& r : {run_i8(x, 3, 1, isa), run_f32(x, 3, 1, isa), run_i8(x, 3, 3, isa)})
                for (size_t j = 0; j < r.ids.size(); ++j)
                    CHECK(r.ids[j] == -1 && r.scores[j] == kNegInf, "slot " << j);
        });
        run_case("NaN rows never returned, " + name, [&] {
            // NaNs both while the heap fills (rows 0, 1) and once it is full (the rest).
            const size_t n = 64, d = 7, k = 6;
            Data x = make_data(80, n, d, 1, MaskKind::none);
            const float nan = std::numeric_limits<float>::quiet_NaN();
            std::vector<char> is_nan(n, 0);
            for (size_t i = 0; i < n; ++i)
                if (i < 2 || i % 3 == 0) {
                    is_nan[i] = 1;
                    x.rows[i * d + (i % d)] = nan;
                    x.scales[i] = nan;
                }
            for (int t : {1, 2}) {
                const Result ri = run_i8(x, k, t, isa), rf = run_f32(x, k, t, isa);
                check_i8(x, k, isa, ri);
                check_f32(x, k, isa, rf);
                for (const Result* r : {&ri, &rf})
                    for (size_t j = 0; j < k; ++j)
                        CHECK(r->ids[j] >= 0 && !is_nan[size_t(r->ids[j])],
                              "slot " << j << " id " << r->ids[j]);
            }
            // Only NaN rows: nothing to return.
            for (size_t i = 0; i < n; ++i) x.scales[i] = nan;
            const Result r = run_i8(x, k, 1, isa);
            for (size_t j = 0; j < k; ++j) CHECK(r.ids[j] == -1 && r.scores[j] == kNegInf, "slot " << j);
        });
        run_case("threads 1/2/3 split the scan identically, " + name, [&] {
            // The driver gives each thread at least 8192 rows, so only n >= 16384 really splits.
            const size_t sizes[][2] = {{16389, 3}, {24593, 17}};
            uint64_t seed = 81;
            for (const auto& nd : sizes) {
                for (MaskKind mk : {MaskKind::none, MaskKind::partial}) {
                    const Data x = make_data(seed++, nd[0], nd[1], 2, mk);
                    const size_t k = 9;
                    const Result i1 = run_i8(x, k, 1, isa), f1 = run_f32(x, k, 1, isa);
                    check_i8(x, k, isa, i1);
                    check_f32(x, k, isa, f1);
                    for (int t : {2, 3}) {
                        std::string where;
                        CHECK(same_bits(run_i8(x, k, t, isa), i1, &where),
                              "i8 n=" << x.n << " threads=" << t << ": " << where);
                        CHECK(same_bits(run_f32(x, k, t, isa), f1, &where),
                              "f32 n=" << x.n << " threads=" << t << ": " << where);
                    }
                }
            }
        });
        run_case("read_probe stays inside odd-sized buffers, " + name, [&] {
            for (size_t nb : {0, 1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000}) {
                std::vector<uint8_t> buf(nb + 1);
                for (size_t i = 0; i < buf.size(); ++i) buf[i] = uint8_t(i * 37 + 1);
                (void)isa.read_probe(buf.data() + 1, nb);
            }
        });
    }
}

void test_quantize() {
    run_case("quantize_vector: |code| <= 127, scale = max|x|/127, round to nearest", [&] {
        Lcg g(5);
        for (size_t d : kDims) {
            for (int rep = 0; rep < 4; ++rep) {
                std::vector<float> x(d);
                const float mag = float(g.range(1, 1 << 20)) / 1024.0f;
                for (float& v : x) v = g.unit() * mag;
                x[g.next() % d] = (rep % 2 ? -mag : mag);  // the extreme is exactly ±mag
                std::vector<int8_t> c(d, 99);
                const float s = sr::quantize_vector(x.data(), d, c.data());
                CHECK(s == mag / 127.0f, "d=" << d << " scale " << s << " vs " << mag / 127.0f);
                int amax = 0;
                for (size_t j = 0; j < d; ++j) {
                    CHECK(int(c[j]) >= -127, "code " << int(c[j]));  // int8 already bounds it above
                    amax = std::max(amax, std::abs(int(c[j])));
                    CHECK(std::fabs(double(x[j]) / double(s) - double(c[j])) <= 0.5 + 1e-5,
                          "d=" << d << " x=" << x[j] << " code " << int(c[j]) << " scale " << s);
                }
                CHECK(amax == 127, "d=" << d << " largest |code| " << amax);
            }
            std::vector<float> z(d, 0.0f);
            std::vector<int8_t> c(d, 99);
            CHECK(sr::quantize_vector(z.data(), d, c.data()) == 0.0f, "zero vector scale");
            CHECK(std::all_of(c.begin(), c.end(), [](int8_t v) { return v == 0; }), "zero vector codes");
        }
        // Half away from zero: x = ±63.5·scale exactly.
        const float x[3] = {127.0f, 63.5f, -63.5f};
        int8_t c[3];
        CHECK(sr::quantize_vector(x, 3, c) == 1.0f, "scale");
        CHECK(c[0] == 127 && c[1] == 64 && c[2] == -64, int(c[1]) << ", " << int(c[2]));
    });
    run_case("scores_from_dots = float(dot) * (scale * qscale)", [&] {
        const int32_t dots[4] = {0, -5, 16129 * 768, -16256 * 768};
        const float scales[4] = {0.25f, 0.0f, 1.0f / 127.0f, 3.5f};
        float out[4];
        sr::scores_from_dots(dots, scales, 0.5f, 4, out);
        for (int i = 0; i < 4; ++i)
            CHECK(fbits(out[i]) == fbits(float(dots[i]) * (scales[i] * 0.5f)), "i=" << i);
    });
}

void test_api(const std::vector<std::string>& isas) {
    run_case("capabilities / kernels_for / force_isa", [&] {
        CHECK(!isas.empty() && isas.front() == "scalar", "capabilities() must start with scalar");
        const std::string active = sr::active_isa();
        CHECK(std::find(isas.begin(), isas.end(), active) != isas.end(),
              "active " << active << " not in capabilities");
        for (const std::string& name : isas) {
            CHECK(std::string(sr::kernels_for(name).name) == name, name);
            sr::force_isa(name);
            CHECK(sr::active_isa() == name, "force_isa(" << name << ") gave " << sr::active_isa());
            CHECK(&sr::active_kernels() == &sr::kernels_for(name), name);
        }
        std::string what;
        CHECK(throws_invalid([] { sr::kernels_for("bogus"); }, &what), "kernels_for(bogus) must throw");
        CHECK(what.find("capabilities") != std::string::npos && what.find("scalar") != std::string::npos,
              "message must list capabilities(): " << what);
        CHECK(throws_invalid([] { sr::force_isa("bogus"); }), "force_isa(bogus) must throw");
        for (const char* other : {"avx2", "avx512vnni", "avxvnni", "neon", "neon_dot"})
            if (std::find(isas.begin(), isas.end(), other) == isas.end())
                CHECK(throws_invalid([&] { sr::kernels_for(other); }),
                      other << " is not available but did not throw");
        sr::force_isa("");
        CHECK(sr::active_isa() == active,
              "force_isa(\"\") restored " << sr::active_isa() << ", not " << active);
    });
    run_case("bad arguments throw std::invalid_argument", [&] {
        const Data x = make_data(3, 8, 4, 1, MaskKind::none);
        const sr::IsaKernels& isa = sr::kernels_for("scalar");
        int64_t ids[8];
        float sc[8];
        for (int which = 0; which < 4; ++which) {
            sr::TopkParams p = params(x, 2, 1);
            if (which == 0) p.d = 0;
            if (which == 1) p.k = 0;
            if (which == 2) p.batch = 0;
            if (which == 3) p.threads = 0;
            CHECK(throws_invalid([&] { sr::topk_f32(x.queries.data(), x.rows.data(), p, isa, ids, sc); }),
                  "f32 case " << which);
            CHECK(throws_invalid([&] {
                      sr::topk_i8(x.queries.data(), x.rows8.data(), x.scales.data(), p, isa, ids, sc);
                  }),
                  "i8 case " << which);
        }
        CHECK(throws_invalid([] {
                  std::vector<uint8_t> b(64);
                  sr::read_bandwidth_gbps(b.data(), b.size(), 0, 1);
              }),
              "repeats = 0");
        std::vector<uint8_t> b(1 << 16, 1);
        CHECK(sr::read_bandwidth_gbps(b.data(), b.size(), 2, 2) > 0.0, "bandwidth");
    });
}

// ---- two-pass search -------------------------------------------------------------------------
// A mean of exact float values (multiples of 1/4096 in [-1/8, 1/8]), so codes agree everywhere.
std::vector<float> make_mean(uint64_t seed, size_t d) {
    Lcg g(seed);
    std::vector<float> m(d);
    for (float& v : m) v = float(g.range(-512, 512)) / 4096.0f;
    return m;
}

std::vector<uint8_t> ref_codes_i8(const Data& x, const std::vector<float>& mean) {
    const size_t nb = sr::code_bytes(x.d);
    std::vector<uint8_t> c(x.n * nb, 0);
    for (size_t i = 0; i < x.n; ++i)
        for (size_t j = 0; j < x.d; ++j)
            if (float(x.rows8[i * x.d + j]) * x.scales[i] > mean[j]) c[i * nb + j / 8] |= uint8_t(1u << (j % 8));
    return c;
}

uint32_t ref_hamming(const uint8_t* a, const uint8_t* b, size_t nb) {
    uint32_t s = 0;
    for (size_t j = 0; j < nb; ++j)
        for (int t = 0; t < 8; ++t) s += ((a[j] ^ b[j]) >> t) & 1u;
    return s;
}

// Reference first pass: rows by (distance asc, row asc), masked rows out, the first r.
std::vector<std::pair<uint32_t, int64_t>> ref_first_pass(const Data& x, const std::vector<uint8_t>& codes,
                                                         const std::vector<float>& mean, size_t q, size_t r) {
    const size_t nb = sr::code_bytes(x.d);
    std::vector<uint8_t> qc(nb, 0);
    for (size_t j = 0; j < x.d; ++j)
        if (x.queries[q * x.d + j] > mean[j]) qc[j / 8] |= uint8_t(1u << (j % 8));
    std::vector<std::pair<uint32_t, int64_t>> v;
    for (size_t i = 0; i < x.n; ++i)
        if (x.mask.empty() || x.mask[i]) v.push_back({ref_hamming(qc.data(), &codes[i * nb], nb), int64_t(i)});
    std::sort(v.begin(), v.end());
    if (v.size() > r) v.resize(r);
    return v;
}

Result run_two_pass_i8(const Data& x, const std::vector<uint8_t>& codes, const std::vector<float>& mean, size_t k,
                       size_t r, int threads, const sr::IsaKernels& isa) {
    Result out{std::vector<int64_t>(x.batch * k, 7), std::vector<float>(x.batch * k, 7.0f)};
    sr::topk_two_pass_i8(x.queries.data(), x.rows8.data(), x.scales.data(), codes.data(), mean.data(), r,
                         params(x, k, threads), isa, out.ids.data(), out.scores.data());
    return out;
}

// The int8 two-pass reference: the exact int8 top-k restricted to the reference candidates.
Result ref_two_pass_i8(const Data& x, const std::vector<uint8_t>& codes, const std::vector<float>& mean, size_t k,
                       size_t r) {
    Result ref{std::vector<int64_t>(x.batch * k), std::vector<float>(x.batch * k)};
    std::vector<int8_t> q8(x.d);
    for (size_t q = 0; q < x.batch; ++q) {
        std::vector<uint8_t> cand(x.n, 0);
        for (const auto& c : ref_first_pass(x, codes, mean, q, r)) cand[size_t(c.second)] = 1;
        const float qs = sr::quantize_vector(&x.queries[q * x.d], x.d, q8.data());
        const std::vector<float> s = i8_ref_scores(q8.data(), qs, x);
        ref_topk(s.data(), x.n, k, cand.data(), &ref.ids[q * k], &ref.scores[q * k]);
    }
    return ref;
}

void test_two_pass(const std::vector<std::string>& isas) {
    const size_t dims[] = {1, 7, 16, 33, 97, 384, 768};
    uint64_t seed = 9000;
    for (size_t d : dims) {
        const size_t nb = sr::code_bytes(d);
        for (MaskKind mk : {MaskKind::none, MaskKind::partial, MaskKind::all_masked, MaskKind::head_masked}) {
            const size_t n = d >= 384 ? 700 : 2100, k = 10, r = 40;
            const Data x = make_data(seed, n, d, 3, mk);
            const std::vector<float> mean = make_mean(seed++, d);
            std::vector<uint8_t> codes(n * nb, 0xAA);
            sr::binary_codes_i8(x.rows8.data(), x.scales.data(), n, d, mean.data(), codes.data(), 2);
            const std::string tag = "d=" + std::to_string(d) + " mask=" + mask_name(mk);
            run_case("binary_codes_i8 " + tag, [&] { CHECK(codes == ref_codes_i8(x, mean), "codes differ"); });
            for (const std::string& name : isas) {
                const sr::IsaKernels& isa = sr::kernels_for(name);
                run_case("hamming " + name + " " + tag, [&] {
                    // row 0's code as the query against rows 1.. (the last row ends the allocation)
                    std::vector<uint32_t> dist(n);
                    for (size_t m : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(9), n - 1}) {
                        std::fill(dist.begin(), dist.end(), 12345u);
                        isa.hamming.fn(&codes[0], &codes[(n - m) * nb], m, nb, dist.data());
                        for (size_t i = 0; i < m; ++i)
                            CHECK(dist[i] == ref_hamming(&codes[0], &codes[(n - m + i) * nb], nb),
                                  "m=" << m << " row " << i << ": " << dist[i]);
                        CHECK(dist[m] == 12345u, "m=" << m << ": wrote past the end");
                    }
                });
                run_case("hamming_topk " + name + " " + tag, [&] {
                    for (int t : {1, 2}) {
                        sr::TopkParams p = params(x, 1, t);
                        std::vector<int64_t> ids(x.batch * r, 7);
                        std::vector<int32_t> dist(x.batch * r, 7);
                        sr::hamming_topk(x.queries.data(), codes.data(), mean.data(), r, p, isa, ids.data(), dist.data());
                        for (size_t q = 0; q < x.batch; ++q) {
                            const auto ref = ref_first_pass(x, codes, mean, q, r);
                            for (size_t j = 0; j < r; ++j) {
                                const bool have = j < ref.size();
                                CHECK(ids[q * r + j] == (have ? ref[j].second : -1) &&
                                          dist[q * r + j] == (have ? int32_t(ref[j].first) : -1),
                                      "threads=" << t << " query " << q << " slot " << j);
                            }
                        }
                    }
                });
                run_case("two_pass_i8 " + name + " " + tag, [&] {
                    const Result got = run_two_pass_i8(x, codes, mean, k, r, 1, isa);
                    std::string where;
                    CHECK(same_bits(got, ref_two_pass_i8(x, codes, mean, k, r), &where), "vs reference at " << where);
                    CHECK(same_bits(run_two_pass_i8(x, codes, mean, k, r, 3, isa), got, &where),
                          "threads=3 differs at " << where);
                    CHECK(same_bits(run_two_pass_i8(x, codes, mean, k, n + 5, 1, isa), run_i8(x, k, 1, isa), &where),
                          "r > n differs from topk_i8 at " << where);
                });
            }
        }
    }
    run_case("two_pass arguments", [&] {
        const Data x = make_data(3, 50, 16, 1, MaskKind::none);
        const std::vector<float> mean = make_mean(3, 16);
        std::vector<uint8_t> codes(50 * 2);
        sr::binary_codes_i8(x.rows8.data(), x.scales.data(), 50, 16, mean.data(), codes.data(), 1);
        std::string what;
        CHECK(throws_invalid([&] { run_two_pass_i8(x, codes, mean, 10, 9, 1, sr::kernels_for("scalar")); }, &what) &&
                  what.find("r (9) must be >= k (10)") != std::string::npos,
              what);
        CHECK(throws_invalid([&] { run_two_pass_i8(x, codes, mean, 10, 0, 1, sr::kernels_for("scalar")); }),
              "r = 0");
    });
}

// ---- digest ---------------------------------------------------------------------------------
struct Fnv {
    uint64_t h = 1469598103934665603ull;
    void byte(uint8_t b) { h = (h ^ b) * 1099511628211ull; }
    void u64(uint64_t v) {
        for (int i = 0; i < 8; ++i) byte(uint8_t(v >> (8 * i)));  // little-endian, explicitly
    }
    void u32(uint32_t v) {
        for (int i = 0; i < 4; ++i) byte(uint8_t(v >> (8 * i)));
    }
};

// FNV-1a 64 over the int8 top-k (ids as int64 LE, then score bits as uint32 LE) of a fixed workload.
uint64_t digest(const sr::IsaKernels& isa) {
    Fnv f;
    const size_t dims[] = {1, 7, 16, 33, 97, 384};
    uint64_t seed = 4242;
    for (size_t d : dims) {
        for (MaskKind mk : {MaskKind::none, MaskKind::partial}) {
            const size_t n = d >= 384 ? 300 : 1000, k = 16;
            const Data x = make_data(seed++, n, d, 4, mk);
            const Result r = run_i8(x, k, 1, isa);
            for (int64_t id : r.ids) f.u64(uint64_t(id));
            for (float s : r.scores) f.u32(fbits(s));
            // the two-pass result (codes, popcount first pass, rescore) of the same workload
            const std::vector<float> mean = make_mean(seed, d);
            std::vector<uint8_t> codes(n * sr::code_bytes(d));
            sr::binary_codes_i8(x.rows8.data(), x.scales.data(), n, d, mean.data(), codes.data(), 1);
            for (uint8_t c : codes) f.byte(c);
            const Result t = run_two_pass_i8(x, codes, mean, k, 64, 1, isa);
            for (int64_t id : t.ids) f.u64(uint64_t(id));
            for (float s : t.scores) f.u32(fbits(s));
        }
    }
    return f.h;
}

void test_digest(const std::vector<std::string>& isas) {
    run_case("digest is identical on every ISA path", [&] {
        const uint64_t want = digest(sr::kernels_for("scalar"));
        for (const std::string& name : isas) CHECK(digest(sr::kernels_for(name)) == want, name);
    });
}

int usage() {
    std::fprintf(stderr, "usage: test_topk [--expect-isa NAME] [--digest] [-v]\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    std::string expect;
    bool want_digest = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--expect-isa" && i + 1 < argc) {
            expect = argv[++i];
        } else if (a == "--digest") {
            want_digest = true;
        } else if (a == "-v") {
            g_verbose = true;
        } else {
            return usage();
        }
    }
    std::vector<std::string> isas;
    std::string active;
    try {
        isas = sr::capabilities();
        active = sr::active_isa();  // throws when SHELFRANK_FORCE_ISA names an unavailable ISA
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
    }
    std::string caps;
    for (const auto& s : isas) caps += (caps.empty() ? "" : " ") + s;
    std::printf("active_isa: %s\ncapabilities: %s\n", active.c_str(), caps.c_str());
    std::fflush(stdout);
    if (!expect.empty() && active != expect) {
        std::fprintf(stderr, "error: expected active ISA '%s', got '%s' (capabilities: %s)\n", expect.c_str(),
                     active.c_str(), caps.c_str());
        return 2;
    }

    test_api(isas);
    test_quantize();
    test_dot_kernels(isas);
    test_semantics(isas);
    test_topk_grid(isas);
    test_two_pass(isas);
    test_digest(isas);

    if (want_digest) {
        char hex[17];
        std::snprintf(hex, sizeof hex, "%016llx",
                      static_cast<unsigned long long>(digest(sr::active_kernels())));
        std::printf("digest %s\n", hex);
    }
    std::printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
