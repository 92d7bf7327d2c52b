// pybind11 binding: shelfrank._native. Strict on purpose: no dtype casts and no copies of the
// rows; every rejection says how to fix the input. The GIL is released around the scan, and a
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

py::tuple topk(const py::object& query_obj, const py::object& rows_obj, py::ssize_t k,
               const py::object& scales_obj, const py::object& mask_obj, int threads) {
    const py::array query = as_array(query_obj, "query");
    const py::array rows = as_array(rows_obj, "rows");
    if (k < 1) fail("k must be >= 1, got " + std::to_string(k));
    if (threads < 1) fail("threads must be >= 1, got " + std::to_string(threads));

    const bool is_i8 = has_dtype<int8_t>(rows);
    if (!is_i8 && !has_dtype<float>(rows))
        fail("rows must be float32 or int8, got " + dtype_name(rows) +
             "; convert once when loading the catalog (rows.astype(np.float32)) or use "
             "quantize_rows(rows) for int8");
    if (rows.ndim() != 2) fail("rows must be 2-D (N, d), got " + std::to_string(rows.ndim()) + "-D");
    if (!c_contiguous(rows))
        fail("rows must be C-contiguous; pass np.ascontiguousarray(rows) once when loading");
    const size_t n = size_t(rows.shape(0)), d = size_t(rows.shape(1));
    if (d == 0) fail("rows have dimension 0");

    if (!has_dtype<float>(query))
        fail("query must be float32, got " + dtype_name(query) + "; pass query.astype(np.float32)");
    if (query.ndim() != 1 && query.ndim() != 2)
        fail("query must be 1-D (d,) or 2-D (batch, d), got " + std::to_string(query.ndim()) + "-D");
    if (!c_contiguous(query)) fail("query must be C-contiguous; pass np.ascontiguousarray(query)");
    const bool single = query.ndim() == 1;
    const size_t batch = single ? 1 : size_t(query.shape(0));
    const size_t qd = size_t(query.shape(single ? 0 : 1));
    if (qd != d)
        fail("dimension mismatch: query has d=" + std::to_string(qd) + " but rows have d=" +
             std::to_string(d));
    const float* q = static_cast<const float*>(query.data());
    for (size_t i = 0; i < batch * d; ++i)
        if (!std::isfinite(q[i]))
            fail("query contains NaN or inf (query " + std::to_string(i / d) + ", element " +
                 std::to_string(i % d) + "); check the encoder output");

    const float* scales = nullptr;
    py::array scales_arr;
    if (is_i8) {
        if (scales_obj.is_none())
            fail("int8 rows need their per-row scales; pass scales= (the second output of "
                 "quantize_rows)");
        scales_arr = as_array(scales_obj, "scales");
        if (!has_dtype<float>(scales_arr))
            fail("scales must be float32, got " + dtype_name(scales_arr));
        if (scales_arr.ndim() != 1 || size_t(scales_arr.shape(0)) != n)
            fail("scales must have shape (" + std::to_string(n) + ",) to match rows");
        if (!c_contiguous(scales_arr)) fail("scales must be C-contiguous; pass np.ascontiguousarray(scales)");
        scales = static_cast<const float*>(scales_arr.data());
    } else if (!scales_obj.is_none()) {
        fail("scales apply to int8 rows only; drop scales= for float32 rows");
    }

    const uint8_t* mask = nullptr;
    py::array mask_arr;
    if (!mask_obj.is_none()) {
        mask_arr = as_array(mask_obj, "mask");
        if (!has_dtype<bool>(mask_arr))
            fail("mask must be a bool array, got " + dtype_name(mask_arr) + "; pass mask.astype(bool)");
        if (mask_arr.ndim() != 1 || size_t(mask_arr.shape(0)) != n)
            fail("mask must have shape (" + std::to_string(n) + ",) to match rows, got " +
                 std::to_string(mask_arr.ndim() == 1 ? mask_arr.shape(0) : -1));
        if (!c_contiguous(mask_arr)) fail("mask must be C-contiguous; pass np.ascontiguousarray(mask)");
        mask = static_cast<const uint8_t*>(mask_arr.data());
    }

    const size_t kk = size_t(k);
    py::array_t<int64_t> ids(std::vector<py::ssize_t>{py::ssize_t(batch), k});
    py::array_t<float> out_scores(std::vector<py::ssize_t>{py::ssize_t(batch), k});
    int64_t* ip = ids.mutable_data();
    float* sp = out_scores.mutable_data();
    const shelfrank::IsaKernels* isa;
    try {
        isa = &shelfrank::active_kernels();
    } catch (const std::invalid_argument& e) {
        fail(e.what());
    }
    for (size_t b0 = 0; b0 < batch; b0 += kSlice) {
        shelfrank::TopkParams p;
        p.n = n;
        p.d = d;
        p.k = kk;
        p.batch = std::min(kSlice, batch - b0);
        p.threads = threads;
        p.mask = mask;
        {
            py::gil_scoped_release release;
            if (is_i8)
                shelfrank::topk_i8(q + b0 * d, static_cast<const int8_t*>(rows.data()), scales, p,
                                   *isa, ip + b0 * kk, sp + b0 * kk);
            else
                shelfrank::topk_f32(q + b0 * d, static_cast<const float*>(rows.data()), p, *isa,
                                    ip + b0 * kk, sp + b0 * kk);
        }
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }
    if (single) return py::make_tuple(ids.reshape({k}), out_scores.reshape({k}));
    return py::make_tuple(ids, out_scores);
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
    m.doc() = "shelfrank native kernel: exact cosine top-k over fp32 or int8 rows";
    m.def("topk", &topk, py::arg("query"), py::arg("rows"), py::arg("k"), py::kw_only(),
          py::arg("scales") = py::none(), py::arg("mask") = py::none(), py::arg("threads") = 1,
          "Top-k rows by dot product with the query (cosine for L2-normalised inputs).\n\n"
          "Returns (ids int64, scores float32) of shape (k,) for a (d,) query or (B, k) for (B, d).");
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
