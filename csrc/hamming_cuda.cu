// nvcc side of the torch extension brcd_cli._hamming_cuda: the kernels of
// hamming_kernels.cu (the same source CuPy compiles with NVRTC) and thin
// launchers with C++ signatures. No torch headers here, on purpose.
#include "hamming_cuda.h"

#include "hamming_kernels.cu"

namespace brcd_cuda {
namespace {

dim3 grid_of(const Launch& l) { return dim3(l.grid_x, l.grid_y, 1); }
dim3 block_of(const Launch& l) { return dim3(l.block_x, l.block_y, 1); }

typedef brcd_u64 u64;

}  // namespace

cudaError_t knn_chunk(const Launch& l, int words, const void* queries, const void* db, int n_q, long long n_db,
                      long long chunk, int k, int max_d, int qt, int* cand_d, long long* cand_i, long long list_len,
                      long long q_stride) {
    const u64* q = static_cast<const u64*>(queries);
    const u64* d = static_cast<const u64*>(db);
#define BRCD_KNN_CASE(W)                                                                                  \
    case W:                                                                                               \
        brcd_knn_chunk_w##W<<<grid_of(l), block_of(l), l.shared_bytes, l.stream>>>(                      \
            q, d, n_q, n_db, chunk, k, max_d, qt, cand_d, cand_i, list_len, q_stride);                    \
        break;
    switch (words) {
        BRCD_KNN_CASE(1)
        BRCD_KNN_CASE(2)
        BRCD_KNN_CASE(4)
        BRCD_KNN_CASE(8)
        BRCD_KNN_CASE(16)
        default:
            return cudaErrorInvalidValue;
    }
#undef BRCD_KNN_CASE
    return cudaGetLastError();
}

cudaError_t knn_merge(const Launch& l, const int* cand_d, const long long* cand_i, long long q_stride,
                      long long list_len, long long last_len, long long n_lists, int k_out, int max_d, int* out_d,
                      long long* out_i) {
    brcd_knn_merge<<<grid_of(l), block_of(l), l.shared_bytes, l.stream>>>(cand_d, cand_i, q_stride, list_len, last_len,
                                                                        n_lists, k_out, max_d, out_d, out_i);
    return cudaGetLastError();
}

cudaError_t radius_count(const Launch& l, const void* queries, const void* db, int n_q, long long n_db, int words,
                         long long chunk, int radius, int qt, void* counts) {
    brcd_radius_count<<<grid_of(l), block_of(l), l.shared_bytes, l.stream>>>(
        static_cast<const u64*>(queries), static_cast<const u64*>(db), n_q, n_db, words, chunk, radius, qt,
        static_cast<u64*>(counts));
    return cudaGetLastError();
}

cudaError_t radius_emit(const Launch& l, const void* queries, const void* db, int n_q, long long n_db, int words,
                        long long chunk, int radius, int qt, void* cursor, const long long* lims, int* out_d,
                        long long* out_i) {
    brcd_radius_emit<<<grid_of(l), block_of(l), l.shared_bytes, l.stream>>>(
        static_cast<const u64*>(queries), static_cast<const u64*>(db), n_q, n_db, words, chunk, radius, qt,
        static_cast<u64*>(cursor), lims, out_d, out_i);
    return cudaGetLastError();
}

cudaError_t pairwise(const Launch& l, const void* queries, const void* db, const void* masks, int mask_rows, int n_q,
                     long long n_db, int words, int qt, int* out_d, float* out_s) {
    brcd_pairwise<<<grid_of(l), block_of(l), l.shared_bytes, l.stream>>>(
        static_cast<const u64*>(queries), static_cast<const u64*>(db), static_cast<const u64*>(masks), mask_rows, n_q,
        n_db, words, qt, out_d, out_s);
    return cudaGetLastError();
}

cudaError_t msim_forward(const Launch& l, bool double_precision, const void* a, const void* b, const void* mask,
                         int has_mask, long long mask_stride, int n, int m, int L, void* out) {
    if (double_precision) {
        brcd_msim_forward_f64<<<grid_of(l), block_of(l), 0, l.stream>>>(
            static_cast<const double*>(a), static_cast<const double*>(b), static_cast<const double*>(mask), has_mask,
            mask_stride, n, m, L, static_cast<double*>(out));
    } else {
        brcd_msim_forward_f32<<<grid_of(l), block_of(l), 0, l.stream>>>(
            static_cast<const float*>(a), static_cast<const float*>(b), static_cast<const float*>(mask), has_mask,
            mask_stride, n, m, L, static_cast<float*>(out));
    }
    return cudaGetLastError();
}

cudaError_t msim_backward_rows(const Launch& l, bool double_precision, const void* g, const void* a, const void* b,
                               const void* mask, int has_mask, long long mask_stride, int n, int m, int L,
                               void* grad_a, void* grad_mask, void* inv_w) {
    if (double_precision) {
        brcd_msim_backward_rows_f64<<<grid_of(l), block_of(l), 0, l.stream>>>(
            static_cast<const double*>(g), static_cast<const double*>(a), static_cast<const double*>(b),
            static_cast<const double*>(mask), has_mask, mask_stride, n, m, L, static_cast<double*>(grad_a),
            static_cast<double*>(grad_mask), static_cast<double*>(inv_w));
    } else {
        brcd_msim_backward_rows_f32<<<grid_of(l), block_of(l), 0, l.stream>>>(
            static_cast<const float*>(g), static_cast<const float*>(a), static_cast<const float*>(b),
            static_cast<const float*>(mask), has_mask, mask_stride, n, m, L, static_cast<float*>(grad_a),
            static_cast<float*>(grad_mask), static_cast<float*>(inv_w));
    }
    return cudaGetLastError();
}

cudaError_t msim_backward_cols(const Launch& l, bool double_precision, const void* g, const void* a,
                               const void* mask, int has_mask, long long mask_stride, const void* inv_w, int n,
                               int m, int L, void* grad_b) {
    if (double_precision) {
        brcd_msim_backward_cols_f64<<<grid_of(l), block_of(l), 0, l.stream>>>(
            static_cast<const double*>(g), static_cast<const double*>(a), static_cast<const double*>(mask), has_mask,
            mask_stride, static_cast<const double*>(inv_w), n, m, L, static_cast<double*>(grad_b));
    } else {
        brcd_msim_backward_cols_f32<<<grid_of(l), block_of(l), 0, l.stream>>>(
            static_cast<const float*>(g), static_cast<const float*>(a), static_cast<const float*>(mask), has_mask,
            mask_stride, static_cast<const float*>(inv_w), n, m, L, static_cast<float*>(grad_b));
    }
    return cudaGetLastError();
}

}  // namespace brcd_cuda
