// Host-side launchers of the kernels in hamming_kernels.cu, for the torch
// extension. They take raw pointers and a stream so that the nvcc-compiled
// file needs no torch headers (which keeps the CUDA compile of a normal
// install short); hamming_cuda_bindings.cpp adapts tensors to them. Launch
// geometry comes from the Python caller (kernels/cuda.py), which also drives
// the CuPy backend, so both backends launch the same kernels the same way.
// Each function returns the cudaError_t of the launch.
#pragma once

#include <cuda_runtime_api.h>

namespace brcd_cuda {

struct Launch {
    unsigned grid_x, grid_y;
    unsigned block_x, block_y;
    size_t shared_bytes;
    cudaStream_t stream;
};

cudaError_t knn_chunk(const Launch& l, int words, const void* queries, const void* db, int n_q, long long n_db,
                      long long chunk, int k, int max_d, int qt, int* cand_d, long long* cand_i, long long list_len,
                      long long q_stride);

cudaError_t knn_merge(const Launch& l, const int* cand_d, const long long* cand_i, long long q_stride,
                      long long list_len, long long last_len, long long n_lists, int k_out, int max_d, int* out_d,
                      long long* out_i);

cudaError_t radius_count(const Launch& l, const void* queries, const void* db, int n_q, long long n_db, int words,
                         long long chunk, int radius, int qt, void* counts);

cudaError_t radius_emit(const Launch& l, const void* queries, const void* db, int n_q, long long n_db, int words,
                        long long chunk, int radius, int qt, void* cursor, const long long* lims, int* out_d,
                        long long* out_i);

cudaError_t pairwise(const Launch& l, const void* queries, const void* db, const void* masks, int mask_rows, int n_q,
                     long long n_db, int words, int qt, int* out_d, float* out_s);

// The dense masked similarity, for float (double_precision = false) or double.
cudaError_t msim_forward(const Launch& l, bool double_precision, const void* a, const void* b, const void* mask,
                         int has_mask, long long mask_stride, int n, int m, int L, void* out);

cudaError_t msim_backward_rows(const Launch& l, bool double_precision, const void* g, const void* a, const void* b,
                               const void* mask, int has_mask, long long mask_stride, int n, int m, int L,
                               void* grad_a, void* grad_mask, void* inv_w);

cudaError_t msim_backward_cols(const Launch& l, bool double_precision, const void* g, const void* a,
                               const void* mask, int has_mask, long long mask_stride, const void* inv_w, int n,
                               int m, int L, void* grad_b);

}  // namespace brcd_cuda
