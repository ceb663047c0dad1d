// Python face of the torch extension brcd_cli._hamming_cuda.
//
// Each function launches one kernel of hamming_kernels.cu on torch's current
// stream of the tensors' device, with the geometry the caller computed
// (kernels/cuda.py plans launches once for this extension and for CuPy).
// Pointers are taken from tensors the caller has already shaped, typed and
// made contiguous; the checks here guard only against a caller bug reaching
// the GPU with a wrong tensor, never against user input.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>

#include "hamming_cuda.h"

namespace {

constexpr int kApiVersion = 1;

brcd_cuda::Launch make_launch(const at::Tensor& on, int64_t grid_x, int64_t grid_y, int64_t block_x, int64_t block_y,
                              int64_t shared_bytes) {
    TORCH_CHECK(grid_x > 0 && grid_y > 0 && grid_x < (int64_t(1) << 31) && grid_y < 65536, "bad grid ", grid_x, "x",
                grid_y);
    TORCH_CHECK(block_x > 0 && block_y > 0 && block_x * block_y <= 1024, "bad block ", block_x, "x", block_y);
    TORCH_CHECK(shared_bytes >= 0 && shared_bytes <= 48 * 1024, "dynamic shared memory over 48 KiB: ", shared_bytes);
    brcd_cuda::Launch l;
    l.grid_x = static_cast<unsigned>(grid_x);
    l.grid_y = static_cast<unsigned>(grid_y);
    l.block_x = static_cast<unsigned>(block_x);
    l.block_y = static_cast<unsigned>(block_y);
    l.shared_bytes = static_cast<size_t>(shared_bytes);
    l.stream = c10::cuda::getCurrentCUDAStream(on.device().index()).stream();
    return l;
}

const void* ptr(const at::Tensor& t, at::ScalarType dtype, const at::Tensor& on) {
    TORCH_CHECK(t.is_cuda() && t.device() == on.device(), "tensor on ", t.device(), ", expected ", on.device());
    TORCH_CHECK(t.scalar_type() == dtype, "tensor of ", t.scalar_type(), ", expected ", dtype);
    TORCH_CHECK(t.is_contiguous(), "tensor must be contiguous");
    return t.data_ptr();
}

void* mut(const at::Tensor& t, at::ScalarType dtype, const at::Tensor& on) { return const_cast<void*>(ptr(t, dtype, on)); }

const void* opt_ptr(const std::optional<at::Tensor>& t, at::ScalarType dtype, const at::Tensor& on) {
    return t.has_value() ? ptr(*t, dtype, on) : nullptr;
}

void check(cudaError_t err, const char* what) {
    TORCH_CHECK(err == cudaSuccess, "brcd CUDA kernel ", what, " failed to launch: ", cudaGetErrorString(err));
}

using at::kDouble;
using at::kFloat;
using at::kInt;
using at::kLong;

void knn_chunk(int64_t gx, int64_t gy, int64_t smem, int64_t words, const at::Tensor& q, const at::Tensor& db,
               int64_t n_q, int64_t n_db, int64_t chunk, int64_t k, int64_t max_d, int64_t qt, const at::Tensor& cand_d,
               const at::Tensor& cand_i, int64_t list_len, int64_t q_stride) {
    const c10::cuda::CUDAGuard guard(q.device());
    const auto l = make_launch(q, gx, gy, 256, 1, smem);
    check(brcd_cuda::knn_chunk(l, static_cast<int>(words), ptr(q, kLong, q), ptr(db, kLong, q), static_cast<int>(n_q),
                               n_db, chunk, static_cast<int>(k), static_cast<int>(max_d), static_cast<int>(qt),
                               static_cast<int*>(mut(cand_d, kInt, q)), static_cast<long long*>(mut(cand_i, kLong, q)),
                               list_len, q_stride),
          "knn_chunk");
}

void knn_merge(int64_t gx, int64_t smem, const at::Tensor& cand_d, const at::Tensor& cand_i, int64_t q_stride,
               int64_t list_len, int64_t last_len, int64_t n_lists, int64_t k_out, int64_t max_d,
               const at::Tensor& out_d, const at::Tensor& out_i) {
    const c10::cuda::CUDAGuard guard(cand_d.device());
    const auto l = make_launch(cand_d, gx, 1, 256, 1, smem);
    check(brcd_cuda::knn_merge(l, static_cast<const int*>(ptr(cand_d, kInt, cand_d)),
                               static_cast<const long long*>(ptr(cand_i, kLong, cand_d)), q_stride, list_len, last_len,
                               n_lists, static_cast<int>(k_out), static_cast<int>(max_d),
                               static_cast<int*>(mut(out_d, kInt, cand_d)),
                               static_cast<long long*>(mut(out_i, kLong, cand_d))),
          "knn_merge");
}

void radius_count(int64_t gx, int64_t gy, int64_t smem, const at::Tensor& q, const at::Tensor& db, int64_t n_q,
                  int64_t n_db, int64_t words, int64_t chunk, int64_t radius, int64_t qt, const at::Tensor& counts) {
    const c10::cuda::CUDAGuard guard(q.device());
    const auto l = make_launch(q, gx, gy, 256, 1, smem);
    check(brcd_cuda::radius_count(l, ptr(q, kLong, q), ptr(db, kLong, q), static_cast<int>(n_q), n_db,
                                  static_cast<int>(words), chunk, static_cast<int>(radius), static_cast<int>(qt),
                                  mut(counts, kLong, q)),
          "radius_count");
}

void radius_emit(int64_t gx, int64_t gy, int64_t smem, const at::Tensor& q, const at::Tensor& db, int64_t n_q,
                 int64_t n_db, int64_t words, int64_t chunk, int64_t radius, int64_t qt, const at::Tensor& cursor,
                 const at::Tensor& lims, const at::Tensor& out_d, const at::Tensor& out_i) {
    const c10::cuda::CUDAGuard guard(q.device());
    const auto l = make_launch(q, gx, gy, 256, 1, smem);
    check(brcd_cuda::radius_emit(l, ptr(q, kLong, q), ptr(db, kLong, q), static_cast<int>(n_q), n_db,
                                 static_cast<int>(words), chunk, static_cast<int>(radius), static_cast<int>(qt),
                                 mut(cursor, kLong, q), static_cast<const long long*>(ptr(lims, kLong, q)),
                                 static_cast<int*>(mut(out_d, kInt, q)), static_cast<long long*>(mut(out_i, kLong, q))),
          "radius_emit");
}

void pairwise(int64_t gx, int64_t gy, int64_t smem, const at::Tensor& q, const at::Tensor& db,
              const std::optional<at::Tensor>& masks, int64_t mask_rows, int64_t n_q, int64_t n_db, int64_t words,
              int64_t qt, const std::optional<at::Tensor>& out_d, const std::optional<at::Tensor>& out_s) {
    const c10::cuda::CUDAGuard guard(q.device());
    const auto l = make_launch(q, gx, gy, 256, 1, smem);
    TORCH_CHECK(out_d.has_value() != out_s.has_value(), "pairwise writes exactly one of out_d, out_s");
    TORCH_CHECK(masks.has_value() == (mask_rows > 0), "masks and mask_rows disagree");
    check(brcd_cuda::pairwise(l, ptr(q, kLong, q), ptr(db, kLong, q), opt_ptr(masks, kLong, q),
                              static_cast<int>(mask_rows), static_cast<int>(n_q), n_db, static_cast<int>(words),
                              static_cast<int>(qt), static_cast<int*>(const_cast<void*>(opt_ptr(out_d, kInt, q))),
                              static_cast<float*>(const_cast<void*>(opt_ptr(out_s, kFloat, q)))),
          "pairwise");
}

at::ScalarType float_type(const at::Tensor& t) {
    TORCH_CHECK(t.scalar_type() == kFloat || t.scalar_type() == kDouble, "float32 or float64 expected, got ",
                t.scalar_type());
    return t.scalar_type();
}

void msim_forward(int64_t gx, int64_t gy, const at::Tensor& a, const at::Tensor& b,
                  const std::optional<at::Tensor>& mask, int64_t mask_stride, int64_t n, int64_t m, int64_t L,
                  const at::Tensor& out) {
    const c10::cuda::CUDAGuard guard(a.device());
    const auto dt = float_type(a);
    const auto l = make_launch(a, gx, gy, 16, 16, 0);
    check(brcd_cuda::msim_forward(l, dt == kDouble, ptr(a, dt, a), ptr(b, dt, a), opt_ptr(mask, dt, a),
                                  mask.has_value() ? 1 : 0, mask_stride, static_cast<int>(n), static_cast<int>(m),
                                  static_cast<int>(L), mut(out, dt, a)),
          "msim_forward");
}

void msim_backward_rows(int64_t gx, int64_t gy, const at::Tensor& g, const at::Tensor& a, const at::Tensor& b,
                        const std::optional<at::Tensor>& mask, int64_t mask_stride, int64_t n, int64_t m, int64_t L,
                        const at::Tensor& grad_a, const std::optional<at::Tensor>& grad_mask, const at::Tensor& inv_w) {
    const c10::cuda::CUDAGuard guard(a.device());
    const auto dt = float_type(a);
    const auto l = make_launch(a, gx, gy, 16, 16, 0);
    check(brcd_cuda::msim_backward_rows(l, dt == kDouble, ptr(g, dt, a), ptr(a, dt, a), ptr(b, dt, a),
                                        opt_ptr(mask, dt, a), mask.has_value() ? 1 : 0, mask_stride,
                                        static_cast<int>(n), static_cast<int>(m), static_cast<int>(L),
                                        mut(grad_a, dt, a), const_cast<void*>(opt_ptr(grad_mask, dt, a)),
                                        mut(inv_w, dt, a)),
          "msim_backward_rows");
}

void msim_backward_cols(int64_t gx, int64_t gy, const at::Tensor& g, const at::Tensor& a,
                        const std::optional<at::Tensor>& mask, int64_t mask_stride, const at::Tensor& inv_w, int64_t n,
                        int64_t m, int64_t L, const at::Tensor& grad_b) {
    const c10::cuda::CUDAGuard guard(a.device());
    const auto dt = float_type(a);
    const auto l = make_launch(a, gx, gy, 16, 16, 0);
    check(brcd_cuda::msim_backward_cols(l, dt == kDouble, ptr(g, dt, a), ptr(a, dt, a), opt_ptr(mask, dt, a),
                                        mask.has_value() ? 1 : 0, mask_stride, ptr(inv_w, dt, a), static_cast<int>(n),
                                        static_cast<int>(m), static_cast<int>(L), mut(grad_b, dt, a)),
          "msim_backward_cols");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "brcd CUDA kernels: packed k-NN, radius search, pairwise packed ops, dense masked similarity";
    m.attr("API_VERSION") = kApiVersion;
    m.def("knn_chunk", &knn_chunk);
    m.def("knn_merge", &knn_merge);
    m.def("radius_count", &radius_count);
    m.def("radius_emit", &radius_emit);
    m.def("pairwise", &pairwise);
    m.def("msim_forward", &msim_forward);
    m.def("msim_backward_rows", &msim_backward_rows);
    m.def("msim_backward_cols", &msim_backward_cols);
}
