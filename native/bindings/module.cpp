// pybind11 binding: shelfrank._native. Strict on purpose: no dtype casts and no copies of the
// rows (any row stride, each row contiguous); every rejection says how to fix the input. The
// Python-visible contract is written out in src/shelfrank/_native.pyi (checked against this
// module by tests/native/test_stub.py). The GIL is released around the scan, and a
// large batch is scanned in slices so that Ctrl-C is noticed between them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "shelfrank/topk.hpp"

namespace py = pybind11;

namespace {

template <class T>
bool has_dtype(const py::array& a) {
    return py::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), py::dtype::of<T>().ptr());
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

bool c_contiguous(const py::array& a) { return (a.flags() & py::array::c_style) != 0; }

[[noreturn]] void fail(const std::string& msg) { throw py::value_error(msg); }

py::array as_array(const py::handle& h, const char* what) {
    if (!py::isinstance<py::array>(h))
        fail(std::string(what) + " must be a numpy array, got " +
             py::str(py::type::of(h).attr("__name__")).cast<std::string>());
    return py::reinterpret_borrow<py::array>(h);
}

constexpr size_t kSlice = 64;  // queries per GIL-free slice; Ctrl-C is checked between slices

struct Rows {
    py::array arr;
    bool i8 = false;
    size_t n = 0, d = 0;
    size_t stride = 0;  // elements from one row to the next (d when packed)
};

Rows check_rows(const py::object& rows_obj) {
    Rows r;
    r.arr = as_array(rows_obj, "rows");
    r.i8 = has_dtype<int8_t>(r.arr);
    if (!r.i8 && !has_dtype<float>(r.arr))
        fail("rows must be float32 or int8, got " + dtype_name(r.arr) +
             "; convert once when loading the catalog (rows.astype(np.float32)) or use "
             "quantize_rows(rows) for int8");
    if (r.arr.ndim() != 2) fail("rows must be 2-D (N, d), got " + std::to_string(r.arr.ndim()) + "-D");
    r.n = size_t(r.arr.shape(0));
    r.d = size_t(r.arr.shape(1));
    if (r.d == 0) fail("rows have dimension 0");
    // Any row stride is fine as long as each row is contiguous (a row slice rows[::2], a view of
    // a wider array's leading columns): the kernel reads row i at data + i * stride, no copy.
    const py::ssize_t item = r.arr.itemsize();
    const bool last_ok = r.d == 1 || r.arr.strides(1) == item;
    const py::ssize_t s0 = r.arr.strides(0);
    if (!last_ok || (r.n > 1 && (s0 <= 0 || s0 % item != 0 || size_t(s0 / item) < r.d)))
        fail("rows must be contiguous in the last axis with a positive row stride (got strides " +
             std::to_string(s0) + ", " + std::to_string(r.arr.strides(1)) + " bytes for " + std::to_string(item) +
             "-byte elements); pass np.ascontiguousarray(rows) once when loading");
    r.stride = r.n > 1 ? size_t(s0 / item) : r.d;
    return r;
}

struct Query {
    py::array arr;
    bool single = true;
    size_t batch = 1;
    const float* data = nullptr;
};

Query check_query(const py::object& query_obj, size_t d, const char* other) {
    Query qr;
    qr.arr = as_array(query_obj, "query");
    const py::array& query = qr.arr;
    if (!has_dtype<float>(query))
        fail("query must be float32, got " + dtype_name(query) + "; pass query.astype(np.float32)");
    if (query.ndim() != 1 && query.ndim() != 2)
        fail("query must be 1-D (d,) or 2-D (batch, d), got " + std::to_string(query.ndim()) + "-D");
    if (!c_contiguous(query)) fail("query must be C-contiguous; pass np.ascontiguousarray(query)");
    qr.single = query.ndim() == 1;
    qr.batch = qr.single ? 1 : size_t(query.shape(0));
    const size_t qd = size_t(query.shape(qr.single ? 0 : 1));
    if (qd != d)
        fail("dimension mismatch: query has d=" + std::to_string(qd) + " but " + other + " have d=" +
             std::to_string(d));
    qr.data = static_cast<const float*>(query.data());
    for (size_t i = 0; i < qr.batch * d; ++i)
        if (!std::isfinite(qr.data[i]))
            fail("query contains NaN or inf (query " + std::to_string(i / d) + ", element " +
                 std::to_string(i % d) + "); check the encoder output");
    return qr;
}

const float* check_scales(const py::object& scales_obj, const Rows& rows, py::array& keep) {
    if (rows.i8) {
        if (scales_obj.is_none())
            fail("int8 rows need their per-row scales; pass scales= (the second output of "
                 "quantize_rows)");
        keep = as_array(scales_obj, "scales");
        if (!has_dtype<float>(keep)) fail("scales must be float32, got " + dtype_name(keep));
        if (keep.ndim() != 1 || size_t(keep.shape(0)) != rows.n)
            fail("scales must have shape (" + std::to_string(rows.n) + ",) to match rows");
        if (!c_contiguous(keep)) fail("scales must be C-contiguous; pass np.ascontiguousarray(scales)");
        return static_cast<const float*>(keep.data());
    }
    if (!scales_obj.is_none()) fail("scales apply to int8 rows only; drop scales= for float32 rows");
    return nullptr;
}

const uint8_t* check_mask(const py::object& mask_obj, size_t n, py::array& keep) {
    if (mask_obj.is_none()) return nullptr;
    keep = as_array(mask_obj, "mask");
    if (!has_dtype<bool>(keep))
        fail("mask must be a bool array, got " + dtype_name(keep) + "; pass mask.astype(bool)");
    if (keep.ndim() != 1 || size_t(keep.shape(0)) != n)
        fail("mask must have shape (" + std::to_string(n) + ",) to match rows, got " +
             std::to_string(keep.ndim() == 1 ? keep.shape(0) : -1));
    if (!c_contiguous(keep)) fail("mask must be C-contiguous; pass np.ascontiguousarray(mask)");
    return static_cast<const uint8_t*>(keep.data());
}

// The catalog mean the codes were made against: float32 (d,), finite.
const float* check_mean(const py::object& mean_obj, size_t d, py::array& keep) {
    keep = as_array(mean_obj, "mean");
    if (!has_dtype<float>(keep)) fail("mean must be float32, got " + dtype_name(keep) + "; pass mean.astype(np.float32)");
    if (keep.ndim() != 1 || size_t(keep.shape(0)) != d)
        fail("mean must have shape (" + std::to_string(d) + ",) (one value per dimension), got " +
             py::str(py::tuple(py::cast(std::vector<py::ssize_t>(keep.shape(), keep.shape() + keep.ndim()))))
                 .cast<std::string>());
    if (!c_contiguous(keep)) fail("mean must be C-contiguous; pass np.ascontiguousarray(mean)");
    const float* m = static_cast<const float*>(keep.data());
    for (size_t j = 0; j < d; ++j)
        if (!std::isfinite(m[j]))
            fail("mean contains NaN or inf (element " + std::to_string(j) + "); recompute it from finite rows");
    return m;
}

// Binary codes of n rows of dimension d: uint8 (n, ceil(d/8)), C-contiguous.
const uint8_t* check_codes(const py::object& codes_obj, size_t n, size_t d, py::array& keep) {
    keep = as_array(codes_obj, "codes");
    const size_t nb = shelfrank::code_bytes(d);
    const std::string want = "(" + std::to_string(n) + ", " + std::to_string(nb) + ")";
    if (!has_dtype<uint8_t>(keep))
        fail("codes must be uint8 " + want + ", got " + dtype_name(keep) +
             "; make them with binary_codes(rows, mean=...)");
    if (keep.ndim() != 2 || size_t(keep.shape(0)) != n || size_t(keep.shape(1)) != nb) {
        std::string got = "(";
        for (py::ssize_t i = 0; i < keep.ndim(); ++i) got += (i ? ", " : "") + std::to_string(keep.shape(i));
        got += keep.ndim() == 1 ? ",)" : ")";
        fail("codes must have shape " + want + " (N rows, ceil(d/8) bytes for d=" + std::to_string(d) + "), got " +
             got + "; rebuild them with binary_codes(rows, mean=...) whenever the rows change");
    }
    if (!c_contiguous(keep)) fail("codes must be C-contiguous; pass np.ascontiguousarray(codes)");
    return static_cast<const uint8_t*>(keep.data());
}

constexpr size_t kMaxR = size_t(1) << 24;

// r > N is clamped to N; r beyond both N and 2^24 is a mistake, not a request.
size_t check_r(py::ssize_t r, size_t n) {
    if (r < 1) fail("r must be >= 1, got " + std::to_string(r));
    if (size_t(r) > n && size_t(r) > kMaxR)
        fail("r=" + std::to_string(r) + " is larger than the catalog (" + std::to_string(n) + " rows) and than " +
             std::to_string(kMaxR) + "; pass r <= N (a few hundred to a few thousand candidates)");
    return std::min(size_t(r), n);
}

const shelfrank::IsaKernels& active() {
    try {
        return shelfrank::active_kernels();
    } catch (const std::invalid_argument& e) {
        fail(e.what());
    }
}

py::tuple shaped(py::array ids, py::array scores, const Query& qr, py::ssize_t k) {
    if (qr.single) return py::make_tuple(ids.reshape({k}), scores.reshape({k}));
    return py::make_tuple(ids, scores);
}

py::tuple topk(const py::object& query_obj, const py::object& rows_obj, py::ssize_t k,
               const py::object& scales_obj, const py::object& mask_obj, int threads) {
    as_array(query_obj, "query");
    as_array(rows_obj, "rows");
    if (k < 1) fail("k must be >= 1, got " + std::to_string(k));
    if (threads < 1) fail("threads must be >= 1, got " + std::to_string(threads));
    const Rows rows = check_rows(rows_obj);
    const size_t n = rows.n, d = rows.d;
    const Query qr = check_query(query_obj, d, "rows");
    const float* q = qr.data;
    const size_t batch = qr.batch;
    py::array scales_arr, mask_arr;
    const float* scales = check_scales(scales_obj, rows, scales_arr);
    const uint8_t* mask = check_mask(mask_obj, n, mask_arr);

    const size_t kk = size_t(k);
    py::array_t<int64_t> ids(std::vector<py::ssize_t>{py::ssize_t(batch), k});
    py::array_t<float> out_scores(std::vector<py::ssize_t>{py::ssize_t(batch), k});
    int64_t* ip = ids.mutable_data();
    float* sp = out_scores.mutable_data();
    const shelfrank::IsaKernels* isa = &active();
    for (size_t b0 = 0; b0 < batch; b0 += kSlice) {
        shelfrank::TopkParams p;
        p.n = n;
        p.d = d;
        p.k = kk;
        p.batch = std::min(kSlice, batch - b0);
        p.threads = threads;
        p.mask = mask;
        p.row_stride = rows.stride;
        {
            py::gil_scoped_release release;
            if (rows.i8)
                shelfrank::topk_i8(q + b0 * d, static_cast<const int8_t*>(rows.arr.data()), scales, p,
                                   *isa, ip + b0 * kk, sp + b0 * kk);
            else
                shelfrank::topk_f32(q + b0 * d, static_cast<const float*>(rows.arr.data()), p, *isa,
                                    ip + b0 * kk, sp + b0 * kk);
        }
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
    return shaped(ids, out_scores, qr, k);
}

py::tuple topk_two_pass(const py::object& query_obj, const py::object& rows_obj, py::ssize_t k,
                        const py::object& codes_obj, const py::object& mean_obj, py::ssize_t r,
                        const py::object& scales_obj, const py::object& mask_obj, int threads) {
    as_array(query_obj, "query");
    as_array(rows_obj, "rows");
    if (k < 1) fail("k must be >= 1, got " + std::to_string(k));
    if (threads < 1) fail("threads must be >= 1, got " + std::to_string(threads));
    const Rows rows = check_rows(rows_obj);
    if (r < k)
        fail("r (" + std::to_string(r) + " first-pass candidates) must be >= k (" + std::to_string(k) +
             "); pass r >= k, typically 10-50x k");
    const size_t n = rows.n, d = rows.d;
    const Query qr = check_query(query_obj, d, "rows");
    py::array scales_arr, mask_arr, codes_arr, mean_arr;
    const float* scales = check_scales(scales_obj, rows, scales_arr);
    const uint8_t* codes = check_codes(codes_obj, n, d, codes_arr);
    const float* mean = check_mean(mean_obj, d, mean_arr);
    const uint8_t* mask = check_mask(mask_obj, n, mask_arr);
    check_r(r, n);

    const size_t kk = size_t(k), batch = qr.batch;
    py::array_t<int64_t> ids(std::vector<py::ssize_t>{py::ssize_t(batch), k});
    py::array_t<float> out_scores(std::vector<py::ssize_t>{py::ssize_t(batch), k});
    int64_t* ip = ids.mutable_data();
    float* sp = out_scores.mutable_data();
    const shelfrank::IsaKernels* isa = &active();
    for (size_t b0 = 0; b0 < batch; b0 += kSlice) {
        shelfrank::TopkParams p;
        p.n = n;
        p.d = d;
        p.k = kk;
        p.batch = std::min(kSlice, batch - b0);
        p.threads = threads;
        p.mask = mask;
        p.row_stride = rows.stride;
        {
            py::gil_scoped_release release;
            // The kernel clamps r to N itself; a catalog smaller than k passes r >= k all the same.
            const size_t rk = std::min(size_t(r), std::max(n, kk));
            if (rows.i8)
                shelfrank::topk_two_pass_i8(qr.data + b0 * d, static_cast<const int8_t*>(rows.arr.data()), scales,
                                            codes, mean, rk, p, *isa, ip + b0 * kk, sp + b0 * kk);
            else
                shelfrank::topk_two_pass_f32(qr.data + b0 * d, static_cast<const float*>(rows.arr.data()), codes,
                                             mean, rk, p, *isa, ip + b0 * kk, sp + b0 * kk);
        }
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
    return shaped(ids, out_scores, qr, k);
}

py::tuple hamming_topk(const py::object& query_obj, const py::object& codes_obj, py::ssize_t r,
                       const py::object& mean_obj, const py::object& mask_obj, int threads) {
    as_array(query_obj, "query");
    const py::array mean_a = as_array(mean_obj, "mean");
    if (mean_a.ndim() != 1) fail("mean must be 1-D (d,), got " + std::to_string(mean_a.ndim()) + "-D");
    const size_t d = size_t(mean_a.shape(0));
    if (d == 0) fail("mean has dimension 0");
    if (threads < 1) fail("threads must be >= 1, got " + std::to_string(threads));
    const py::array codes_a = as_array(codes_obj, "codes");
    if (codes_a.ndim() != 2) fail("codes must be 2-D (N, ceil(d/8)), got " + std::to_string(codes_a.ndim()) + "-D");
    const size_t n = size_t(codes_a.shape(0));
    const Query qr = check_query(query_obj, d, "mean and codes");
    py::array codes_arr, mean_arr, mask_arr;
    const uint8_t* codes = check_codes(codes_obj, n, d, codes_arr);
    const float* mean = check_mean(mean_obj, d, mean_arr);
    const uint8_t* mask = check_mask(mask_obj, n, mask_arr);
    const size_t rr = check_r(r, n);
    const size_t batch = qr.batch;
    const py::ssize_t rs = py::ssize_t(rr);
    py::array_t<int64_t> ids(std::vector<py::ssize_t>{py::ssize_t(batch), rs});
    py::array_t<int32_t> dist(std::vector<py::ssize_t>{py::ssize_t(batch), rs});
    int64_t* ip = ids.mutable_data();
    int32_t* dp = dist.mutable_data();
    const shelfrank::IsaKernels* isa = &active();
    if (rr == 0) return shaped(ids, dist, qr, rs);
    for (size_t b0 = 0; b0 < batch; b0 += kSlice) {
        shelfrank::TopkParams p;
        p.n = n;
        p.d = d;
        p.k = 1;
        p.batch = std::min(kSlice, batch - b0);
        p.threads = threads;
        p.mask = mask;
        {
            py::gil_scoped_release release;
            shelfrank::hamming_topk(qr.data + b0 * d, codes, mean, rr, p, *isa, ip + b0 * rr, dp + b0 * rr);
        }
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
    return shaped(ids, dist, qr, rs);
}

py::array binary_codes(const py::object& rows_obj, const py::object& scales_obj, const py::object& mean_obj,
                       int threads) {
    const Rows rows = check_rows(rows_obj);
    if (threads < 1) fail("threads must be >= 1, got " + std::to_string(threads));
    py::array scales_arr, mean_arr;
    const float* scales = check_scales(scales_obj, rows, scales_arr);
    const float* mean = check_mean(mean_obj, rows.d, mean_arr);
    const size_t n = rows.n, d = rows.d;
    py::ssize_t bad = -1;
    if (!rows.i8) {
        const float* x = static_cast<const float*>(rows.arr.data());
        for (size_t i = 0; i < n && bad < 0; ++i)
            for (size_t j = 0; j < d; ++j)
                if (!std::isfinite(x[i * rows.stride + j])) {
                    bad = py::ssize_t(i);
                    break;
                }
    } else {
        for (size_t i = 0; i < n && bad < 0; ++i)
            if (!std::isfinite(scales[i])) bad = py::ssize_t(i);
    }
    if (bad >= 0)
        fail(std::string(rows.i8 ? "scale of row " : "row ") + std::to_string(bad) +
             " contains NaN or inf; fix the embeddings first");
    py::array_t<uint8_t> out(std::vector<py::ssize_t>{py::ssize_t(n), py::ssize_t(shelfrank::code_bytes(d))});
    uint8_t* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        if (rows.i8)
            shelfrank::binary_codes_i8(static_cast<const int8_t*>(rows.arr.data()), scales, n, d, mean, o, threads,
                                       rows.stride);
        else
            shelfrank::binary_codes_f32(static_cast<const float*>(rows.arr.data()), n, d, mean, o, threads,
                                        rows.stride);
    }
    return out;
}

py::tuple quantize_rows(const py::object& rows_obj) {
    const py::array rows = as_array(rows_obj, "rows");
    if (!has_dtype<float>(rows))
        fail("rows must be float32, got " + dtype_name(rows) + "; pass rows.astype(np.float32)");
    if (rows.ndim() != 2) fail("rows must be 2-D (N, d), got " + std::to_string(rows.ndim()) + "-D");
    if (!c_contiguous(rows)) fail("rows must be C-contiguous; pass np.ascontiguousarray(rows)");
    const size_t n = size_t(rows.shape(0)), d = size_t(rows.shape(1));
    if (d == 0) fail("rows have dimension 0");
    const float* x = static_cast<const float*>(rows.data());
    py::array_t<int8_t> out(std::vector<py::ssize_t>{py::ssize_t(n), py::ssize_t(d)});
    py::array_t<float> scales(std::vector<py::ssize_t>{py::ssize_t(n)});
    int8_t* o = out.mutable_data();
    float* s = scales.mutable_data();
    py::ssize_t bad = -1;
    {
        py::gil_scoped_release release;
        for (size_t i = 0; i < n && bad < 0; ++i) {
            for (size_t j = 0; j < d; ++j)
                if (!std::isfinite(x[i * d + j])) {
                    bad = py::ssize_t(i);
                    break;
                }
            if (bad < 0) s[i] = shelfrank::quantize_vector(x + i * d, d, o + i * d);
        }
    }
    if (bad >= 0) fail("row " + std::to_string(bad) + " contains NaN or inf; fix the embeddings first");
    return py::make_tuple(out, scales);
}

void force_isa(const py::object& name) {
    try {
        shelfrank::force_isa(name.is_none() ? std::string() : name.cast<std::string>());
    } catch (const std::invalid_argument& e) {
        fail(e.what());
    }
}

std::string active_isa() {
    try {
        return shelfrank::active_isa();
    } catch (const std::invalid_argument& e) {
        fail(e.what());
    }
}

double read_bandwidth(size_t nbytes, int repeats, int threads) {
    if (nbytes < 4096) fail("nbytes must be >= 4096");
    if (repeats < 1 || threads < 1) fail("repeats and threads must be >= 1");
    std::vector<uint8_t> buf(nbytes);
    for (size_t i = 0; i < nbytes; i += 4096) buf[i] = uint8_t(i >> 12);  // fault every page in
    py::gil_scoped_release release;
    return shelfrank::read_bandwidth_gbps(buf.data(), nbytes, repeats, threads);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "shelfrank native kernel: exact cosine top-k over fp32 or int8 rows, and two-pass search";
    m.def("topk", &topk, py::arg("query"), py::arg("rows"), py::arg("k"), py::kw_only(),
          py::arg("scales") = py::none(), py::arg("mask") = py::none(), py::arg("threads") = 1,
          "Top-k rows by dot product with the query (cosine for L2-normalised inputs).\n\n"
          "Returns (ids int64, scores float32) of shape (k,) for a (d,) query or (B, k) for (B, d).");
    m.def("topk_two_pass", &topk_two_pass, py::arg("query"), py::arg("rows"), py::arg("k"), py::kw_only(),
          py::arg("codes"), py::arg("mean"), py::arg("r"), py::arg("scales") = py::none(),
          py::arg("mask") = py::none(), py::arg("threads") = 1,
          "Two-pass top-k: the r rows nearest the query's sign code by Hamming distance, rescored\n"
          "exactly as topk scores them. Returns (ids int64, scores float32) like topk.");
    m.def("hamming_topk", &hamming_topk, py::arg("query"), py::arg("codes"), py::arg("r"), py::kw_only(),
          py::arg("mean"), py::arg("mask") = py::none(), py::arg("threads") = 1,
          "The first pass alone: (ids int64, distances int32) of the min(r, N) rows with the smallest\n"
          "Hamming distance to the query's code, best first (ties to the lower row), -1 fill.");
    m.def("binary_codes", &binary_codes, py::arg("rows"), py::kw_only(), py::arg("scales") = py::none(),
          py::arg("mean"), py::arg("threads") = 1,
          "Sign codes of rows - mean: uint8 (N, ceil(d/8)), np.packbits(v > mean, axis=1, bitorder='little').");
    m.def("hamming_isa", [] { return std::string(active().hamming.name); },
          "The popcount scan the active ISA path uses.");
    m.def("quantize_rows", &quantize_rows, py::arg("rows"),
          "Per-row symmetric int8: scale = max|x|/127. Returns (rows int8 (N, d), scales float32 (N,)).");
    m.def("capabilities", &shelfrank::capabilities, "ISA paths this CPU and build can run, best last.");
    m.def("active_isa", &active_isa, "The ISA path in use.");
    m.def("force_isa", &force_isa, py::arg("name"),
          "Pin an ISA path by name; None restores the default (SHELFRANK_FORCE_ISA, else the best).");
    m.def("read_bandwidth", &read_bandwidth, py::arg("nbytes"), py::arg("repeats") = 5,
          py::arg("threads") = 1,
          "Best-of-repeats sequential read bandwidth (GB/s) of a fresh nbytes buffer.");
}
