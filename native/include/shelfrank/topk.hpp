// shelfrank native kernel: exact cosine top-k over fp32 or int8 rows, and a two-pass search
// (a popcount Hamming scan of 1-bit sign codes, then the exact rescore of its candidates).
//
// Plain C++17, no Python headers. Every entry point takes raw pointers and sizes, throws
// std::invalid_argument on bad arguments and never prints.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace shelfrank {

// ---- per-ISA kernels -------------------------------------------------------------------------
// out[i] = dot(q, rows + i*d) for i in [0, n). Integer dots are exact, so every ISA agrees bit for
// bit; float dots agree to rounding only.
using DotI8Fn = void (*)(const int8_t* q, const int8_t* rows, size_t n, size_t d, int32_t* out);
using DotF32Fn = void (*)(const float* q, const float* rows, size_t n, size_t d, float* out);
// Streams `nbytes` once with the widest loads of the ISA; returns a value so the read is kept.
using ReadProbeFn = uint64_t (*)(const uint8_t* buf, size_t nbytes);
// out[i] = popcount(q XOR codes + i*nbytes) over `nbytes` bytes: the Hamming distance of binary
// codes. Exact integers, so every ISA agrees bit for bit.
using HammingFn = void (*)(const uint8_t* q, const uint8_t* codes, size_t n, size_t nbytes, uint32_t* out);

struct HammingKernel {
    const char* name;  // "scalar", "avx2-popcnt", "avx512-vpopcntdq", "neon-cnt"
    HammingFn fn;
};

struct IsaKernels {
    const char* name;
    DotI8Fn dot_i8;
    DotF32Fn dot_f32;
    ReadProbeFn read_probe;
    HammingKernel hamming{nullptr, nullptr};  // filled by dispatch.cpp (the CPU decides, not the table)
};

// Defined in the per-ISA files; a file whose target cannot be compiled for this architecture
// leaves its table null.
extern const IsaKernels kSerialKernels;
const IsaKernels* avx2_kernels();        // null unless built for x86-64
const IsaKernels* avx512vnni_kernels();  // null unless built for x86-64
const IsaKernels* avxvnni_kernels();     // null unless built for x86-64
const IsaKernels* neon_kernels();        // null unless built for aarch64
const IsaKernels* neon_dot_kernels();    // null unless built for aarch64
// Popcount scans, one file each (hamming_*.cpp); null where the file's target is not this architecture.
extern const HammingKernel kSerialHamming;
const HammingKernel* avx2_hamming();    // POPCNT (every AVX2 CPU has it)
const HammingKernel* avx512_hamming();  // AVX-512 VPOPCNTDQ (+BW for the masked tail)
const HammingKernel* neon_hamming();

// ---- dispatch -------------------------------------------------------------------------------
// ISA names the CPU and the build support, best last; always starts with "scalar".
std::vector<std::string> capabilities();
// The active ISA: the best available, or SHELFRANK_FORCE_ISA when set (read on first use).
const IsaKernels& active_kernels();
std::string active_isa();
// Pin an ISA by name ("" restores the default: SHELFRANK_FORCE_ISA, else the best). Throws std::invalid_argument naming the
// available ones when `name` is unknown or not supported here.
void force_isa(const std::string& name);
// Kernels of a named ISA without changing the active one (tests, benchmarks).
const IsaKernels& kernels_for(const std::string& name);

// ---- shared scalar routines (built with -ffp-contract=off: identical on every ISA) -----------
// Symmetric per-vector int8 quantisation: scale = max|x| / 127, x8 = round(x / scale).
// A zero vector gets scale 0 and zero codes. Returns the scale.
float quantize_vector(const float* x, size_t d, int8_t* out);
// out[i] = (float)dots[i] * (scales[i] * qscale)
void scores_from_dots(const int32_t* dots, const float* scales, float qscale, size_t n, float* out);

// ---- top-k ----------------------------------------------------------------------------------
struct TopkParams {
    size_t n = 0;          // rows
    size_t d = 0;          // dimension
    size_t k = 0;          // results per query
    size_t batch = 1;      // queries
    int threads = 1;       // scan split into this many contiguous row ranges
    const uint8_t* mask = nullptr;  // n bytes, nonzero = eligible; null = all
    size_t row_stride = 0;  // elements from one row to the next; 0 = d (rows packed)
};

// Queries are fp32 (batch × d); row i starts at rows + i * row_stride. Results: out_ids/out_scores are batch × k, best first; ties go to
// the lower row; rows whose score is NaN never appear; unfilled slots are id -1, score -inf.
void topk_f32(const float* queries, const float* rows, const TopkParams& p,
              const IsaKernels& isa, int64_t* out_ids, float* out_scores);
// int8 rows with a per-row scale; each query is quantised with quantize_vector first.
void topk_i8(const float* queries, const int8_t* rows, const float* scales, const TopkParams& p,
             const IsaKernels& isa, int64_t* out_ids, float* out_scores);

// ---- two-pass search (two_pass.cpp) ----------------------------------------------------------
// Binary codes: bit j of a row's code is 1 where value_j > mean_j (the sign of value - mean), with
// bit order np.packbits(..., bitorder="little"): dimension 8*b + t is bit t of byte b; pad bits 0.
// Row i's code is out + i*code_bytes(d). int8 rows use value = float(x) * scale_i (one float32
// multiply, as numpy's rows.astype(float32) * scales[:, None]).
inline size_t code_bytes(size_t d) { return (d + 7) / 8; }
// `row_stride`: elements from one row to the next (0 = d).
void binary_codes_f32(const float* rows, size_t n, size_t d, const float* mean, uint8_t* out, int threads,
                      size_t row_stride = 0);
void binary_codes_i8(const int8_t* rows, const float* scales, size_t n, size_t d, const float* mean, uint8_t* out,
                     int threads, size_t row_stride = 0);

// First pass alone: for each query (coded against `mean`), the `r` eligible rows with the smallest
// Hamming distance, best first (distance asc, row asc); unfilled slots are id -1, distance -1.
// p.k is ignored; out_ids/out_dist are batch × r.
void hamming_topk(const float* queries, const uint8_t* codes, const float* mean, size_t r, const TopkParams& p,
                  const IsaKernels& isa, int64_t* out_ids, int32_t* out_dist);
// Two-pass top-k: the first pass keeps `r` candidates (r >= p.k, r <= p.n), then exactly the score
// topk_i8 / topk_f32 gives those rows; same order, fill and NaN rule as topk. Only the candidates'
// rows are read.
void topk_two_pass_i8(const float* queries, const int8_t* rows, const float* scales, const uint8_t* codes,
                      const float* mean, size_t r, const TopkParams& p, const IsaKernels& isa, int64_t* out_ids,
                      float* out_scores);
void topk_two_pass_f32(const float* queries, const float* rows, const uint8_t* codes, const float* mean, size_t r,
                       const TopkParams& p, const IsaKernels& isa, int64_t* out_ids, float* out_scores);

// Best-of-`repeats` single-pass read bandwidth of `buf` in GB/s, with the active ISA's loads.
double read_bandwidth_gbps(const uint8_t* buf, size_t nbytes, int repeats, int threads);

}  // namespace shelfrank
