// GPU kernels of brcd: packed-code k-NN, radius search, pairwise packed
// distances / masked similarities, and the dense masked similarity of the
// BRCD loss (forward and backward).
//
// This one file is the single source of the GPU code. It is compiled twice:
//   * by nvcc, included from hamming_cuda.cu, into the torch extension
//     brcd_cli._hamming_cuda;
//   * at run time by NVRTC through cupy.RawModule (kernels/cupy_backend.py)
//     when the extension was not built.
// NVRTC has no standard headers, so this file includes nothing and uses only
// built-in types and intrinsics. Every kernel has C linkage so both loaders
// find it by the same name; launch geometry is chosen by the Python caller
// (kernels/cuda.py) and passed in, so both backends launch identically.
//
// Packed codes arrive as rows of `words` 64-bit words (the caller zero-pads a
// row of L/8 bytes to a multiple of 8 bytes; zero bits add nothing to a
// distance). Distances are small integers in [0, max_d], max_d = L, which is
// what the selection below exploits: instead of sorting, it counts.

#define BRCD_WARPS 8
#define BRCD_THREADS (BRCD_WARPS * 32)
#define BRCD_FULL_MASK 0xffffffffu

typedef unsigned long long brcd_u64;
typedef long long brcd_i64;

// Dynamic shared memory of every kernel that takes a size at launch.
extern __shared__ brcd_u64 brcd_smem[];

// ---------------------------------------------------------------------------
// Sources of (distance, index) items for the counting selection.
//
// A source loads one item per lane (load) and reports its distance to query
// qi of the block's tile (dist) and the database index to emit (index).
// ---------------------------------------------------------------------------

// Database rows compared with a tile of queries held in shared memory.
template <int W>
struct DbSource {
    const brcd_u64* db;
    const brcd_u64* qs;  // shared: the block's query tile, W words per query
    brcd_u64 x[W];
    brcd_i64 idx;

    __device__ bool usable(brcd_i64) const { return true; }
    __device__ void load(brcd_i64 i, bool valid) {
        idx = i;
#pragma unroll
        for (int j = 0; j < W; ++j) x[j] = valid ? db[i * W + j] : 0ull;
    }
    __device__ int dist(int qi) const {
        int d = 0;
#pragma unroll
        for (int j = 0; j < W; ++j) d += __popcll(x[j] ^ qs[qi * W + j]);
        return d;
    }
    __device__ brcd_i64 index() const { return idx; }
};

// Per-chunk candidate lists of one query, already sorted by (distance, index):
// list c holds positions [c * list_len, c * list_len + len_c), len_c = list_len
// except for the last list, which holds last_len.
struct CandidateSource {
    const int* cand_d;
    const brcd_i64* cand_i;
    brcd_i64 list_len;
    brcd_i64 last_len;
    brcd_i64 n_lists;
    int d;
    brcd_i64 idx;

    __device__ bool usable(brcd_i64 p) const {
        brcd_i64 c = p / list_len;
        brcd_i64 len = (c == n_lists - 1) ? last_len : list_len;
        return (p - c * list_len) < len;
    }
    __device__ void load(brcd_i64 p, bool valid) {
        d = valid ? cand_d[p] : 0;
        idx = valid ? cand_i[p] : 0;
    }
    __device__ int dist(int) const { return d; }
    __device__ brcd_i64 index() const { return idx; }
};

// ---------------------------------------------------------------------------
// Counting top-k selection of one block, exact, ties broken by index.
//
// Items [begin, end) are split into BRCD_WARPS contiguous runs, one per warp,
// and each warp walks its run in order, 32 items at a time, so "earlier in
// (warp, step, lane) order" is "smaller index". For each query of the tile:
//
//   pass 1  every warp builds its own histogram of distances. A warp also
//           keeps a running bound tu: once it has seen kk items at distance
//           <= t, nothing farther than t can be in the top kk, so later items
//           beyond the bound are not counted (most items fail this test,
//           which costs one compare and one ballot instead of an atomic).
//           Bins up to the block's true threshold stay exact, because every
//           warp's bound stays at or above it.
//   between the block threshold T (smallest d whose cumulative count reaches
//           kk) and, for every bin d <= T, each warp's exclusive start slot
//           in (distance, warp) order.
//   pass 2  the warps recompute the distances and emit every item with
//           d <= T at its slot (start of its bin and warp + its rank among
//           the lanes with the same distance); slots >= kk are the surplus
//           ties at T, which are the ones with the largest indices.
// The output list of a query is therefore sorted by (distance, index).
// ---------------------------------------------------------------------------

struct SelectShared {
    unsigned* hist;  // [BRCD_WARPS][qt][max_d + 1], then start slots
    int* tu;         // [BRCD_WARPS][qt] per-warp bound of pass 1
    unsigned* cnt;   // [BRCD_WARPS][qt] items counted at distance <= tu
    int* tb;         // [qt] block threshold T
};

template <class Src>
__device__ void select_topk(Src& src, brcd_i64 begin, brcd_i64 end, int nq, int qt, int kk,
                            int max_d, SelectShared sh, int* out_d, brcd_i64* out_i, brcd_i64 out_q_stride) {
    const int n_bins = max_d + 1;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const unsigned lanes_below = (1u << lane) - 1u;

    for (int t = threadIdx.x; t < BRCD_WARPS * qt * n_bins; t += blockDim.x) sh.hist[t] = 0u;
    for (int t = threadIdx.x; t < BRCD_WARPS * qt; t += blockDim.x) {
        sh.tu[t] = max_d;
        sh.cnt[t] = 0u;
    }
    __syncthreads();

    const brcd_i64 len = end - begin;
    brcd_i64 per_warp = (len + BRCD_WARPS - 1) / BRCD_WARPS;
    per_warp = (per_warp + 31) / 32 * 32;
    const brcd_i64 wbeg = begin + per_warp * warp;
    const brcd_i64 wend = (wbeg + per_warp < end) ? wbeg + per_warp : end;

    // Pass 1: per-warp histograms below a shrinking bound.
    for (brcd_i64 base = wbeg; base < wend; base += 32) {
        const brcd_i64 i = base + lane;
        const bool valid = i < wend && src.usable(i);
        src.load(i, valid);
        for (int qi = 0; qi < nq; ++qi) {
            const int slot = warp * qt + qi;
            const int d = src.dist(qi);
            const int bound = sh.tu[slot];
            const bool pass = valid && d <= bound;
            const unsigned m = __ballot_sync(BRCD_FULL_MASK, pass);
            if (m) {
                unsigned* h = sh.hist + slot * n_bins;
                if (pass) atomicAdd(&h[d], 1u);
                __syncwarp();
                if (lane == 0) {
                    unsigned c = sh.cnt[slot] + __popc(m);
                    int t = bound;
                    while (t > 0 && c - h[t] >= (unsigned)kk) {
                        c -= h[t];
                        --t;
                    }
                    sh.cnt[slot] = c;
                    sh.tu[slot] = t;
                }
                __syncwarp();
            }
        }
    }
    __syncthreads();

    // Block threshold and start slots, one thread per query.
    for (int qi = threadIdx.x; qi < nq; qi += blockDim.x) {
        unsigned below = 0u;
        int T = max_d;
        for (int d = 0; d <= max_d; ++d) {
            unsigned s = 0u;
            for (int w = 0; w < BRCD_WARPS; ++w) s += sh.hist[(w * qt + qi) * n_bins + d];
            if (below + s >= (unsigned)kk) {
                T = d;
                break;
            }
            below += s;
        }
        unsigned start = 0u;
        for (int d = 0; d <= T; ++d) {
            for (int w = 0; w < BRCD_WARPS; ++w) {
                unsigned* h = sh.hist + (w * qt + qi) * n_bins + d;
                const unsigned c = *h;
                *h = start;
                start += c;
            }
        }
        sh.tb[qi] = T;
    }
    __syncthreads();

    // Pass 2: emit every item at distance <= T at its slot.
    for (brcd_i64 base = wbeg; base < wend; base += 32) {
        const brcd_i64 i = base + lane;
        const bool valid = i < wend && src.usable(i);
        src.load(i, valid);
        for (int qi = 0; qi < nq; ++qi) {
            const int d = src.dist(qi);
            const bool pass = valid && d <= sh.tb[qi];
            const unsigned m = __ballot_sync(BRCD_FULL_MASK, pass);
            if (m) {
                if (pass) {
                    const unsigned peers = __match_any_sync(m, d);
                    unsigned* start = sh.hist + (warp * qt + qi) * n_bins + d;
                    const unsigned first = *start;
                    const unsigned slot = first + __popc(peers & lanes_below);
                    if (slot < (unsigned)kk) {
                        out_d[qi * out_q_stride + slot] = d;
                        out_i[qi * out_q_stride + slot] = src.index();
                    }
                    __syncwarp(m);  // every peer has read `first` before the leader moves it
                    if (lane == __ffs(peers) - 1) *start = first + __popc(peers);
                }
                __syncwarp();
            }
        }
    }
}

// Shared memory of select_topk for a tile of qt queries, carved from `base`.
__device__ inline SelectShared select_shared(void* base, int qt, int max_d) {
    SelectShared sh;
    sh.hist = (unsigned*)base;
    sh.tu = (int*)(sh.hist + BRCD_WARPS * qt * (max_d + 1));
    sh.cnt = (unsigned*)(sh.tu + BRCD_WARPS * qt);
    sh.tb = (int*)(sh.cnt + BRCD_WARPS * qt);
    return sh;
}

// k-NN, stage 1. Grid: x = query tile (qt queries), y = database chunk.
// Writes, for every query and chunk, the chunk's top min(k, chunk size) sorted
// by (distance, index) at cand[q * q_stride + chunk * list_len + slot].
// Dynamic shared memory: qt*W u64 + 4 * (WARPS*qt*(max_d+1) + 2*WARPS*qt + qt).
template <int W>
__device__ void knn_chunk_topk(const brcd_u64* queries, const brcd_u64* db, int n_q, brcd_i64 n_db,
                               brcd_i64 chunk, int k, int max_d, int qt, int* cand_d, brcd_i64* cand_i,
                               brcd_i64 list_len, brcd_i64 q_stride) {
    brcd_u64* qs = brcd_smem;
    const int q0 = blockIdx.x * qt;
    const int nq = (n_q - q0 < qt) ? n_q - q0 : qt;
    for (int t = threadIdx.x; t < nq * W; t += blockDim.x) qs[t] = queries[(brcd_i64)q0 * W + t];
    SelectShared sh = select_shared(qs + qt * W, qt, max_d);

    const brcd_i64 begin = (brcd_i64)blockIdx.y * chunk;
    const brcd_i64 end = (begin + chunk < n_db) ? begin + chunk : n_db;
    const int kk = (end - begin < (brcd_i64)k) ? (int)(end - begin) : k;
    DbSource<W> src;
    src.db = db;
    src.qs = qs;
    const brcd_i64 off = (brcd_i64)q0 * q_stride + (brcd_i64)blockIdx.y * list_len;
    // select_topk's first __syncthreads also publishes the query tile.
    select_topk(src, begin, end, nq, qt, kk, max_d, sh, cand_d + off, cand_i + off, q_stride);
}

extern "C" __global__ void __launch_bounds__(BRCD_THREADS)
brcd_knn_chunk_w1(const brcd_u64* q, const brcd_u64* db, int n_q, brcd_i64 n_db, brcd_i64 chunk, int k, int max_d,
                  int qt, int* cd, brcd_i64* ci, brcd_i64 list_len, brcd_i64 q_stride) {
    knn_chunk_topk<1>(q, db, n_q, n_db, chunk, k, max_d, qt, cd, ci, list_len, q_stride);
}
extern "C" __global__ void __launch_bounds__(BRCD_THREADS)
brcd_knn_chunk_w2(const brcd_u64* q, const brcd_u64* db, int n_q, brcd_i64 n_db, brcd_i64 chunk, int k, int max_d,
                  int qt, int* cd, brcd_i64* ci, brcd_i64 list_len, brcd_i64 q_stride) {
    knn_chunk_topk<2>(q, db, n_q, n_db, chunk, k, max_d, qt, cd, ci, list_len, q_stride);
}
extern "C" __global__ void __launch_bounds__(BRCD_THREADS)
brcd_knn_chunk_w4(const brcd_u64* q, const brcd_u64* db, int n_q, brcd_i64 n_db, brcd_i64 chunk, int k, int max_d,
                  int qt, int* cd, brcd_i64* ci, brcd_i64 list_len, brcd_i64 q_stride) {
    knn_chunk_topk<4>(q, db, n_q, n_db, chunk, k, max_d, qt, cd, ci, list_len, q_stride);
}
extern "C" __global__ void __launch_bounds__(BRCD_THREADS)
brcd_knn_chunk_w8(const brcd_u64* q, const brcd_u64* db, int n_q, brcd_i64 n_db, brcd_i64 chunk, int k, int max_d,
                  int qt, int* cd, brcd_i64* ci, brcd_i64 list_len, brcd_i64 q_stride) {
    knn_chunk_topk<8>(q, db, n_q, n_db, chunk, k, max_d, qt, cd, ci, list_len, q_stride);
}
extern "C" __global__ void __launch_bounds__(BRCD_THREADS)
brcd_knn_chunk_w16(const brcd_u64* q, const brcd_u64* db, int n_q, brcd_i64 n_db, brcd_i64 chunk, int k, int max_d,
                   int qt, int* cd, brcd_i64* ci, brcd_i64 list_len, brcd_i64 q_stride) {
    knn_chunk_topk<16>(q, db, n_q, n_db, chunk, k, max_d, qt, cd, ci, list_len, q_stride);
}

// k-NN, stage 2: merge the per-chunk lists of each query (one block per query)
// into its final top k_out, sorted by (distance, index). Lists are in chunk
// order and each is sorted, so equal distances appear in index order and the
// same counting selection applies. Dynamic shared memory:
// 4 * (WARPS*(max_d+1) + 2*WARPS + 1).
extern "C" __global__ void __launch_bounds__(BRCD_THREADS)
brcd_knn_merge(const int* cand_d, const brcd_i64* cand_i, brcd_i64 q_stride, brcd_i64 list_len, brcd_i64 last_len,
               brcd_i64 n_lists, int k_out, int max_d, int* out_d, brcd_i64* out_i) {
    SelectShared sh = select_shared(brcd_smem, 1, max_d);
    const brcd_i64 q = blockIdx.x;
    CandidateSource src;
    src.cand_d = cand_d + q * q_stride;
    src.cand_i = cand_i + q * q_stride;
    src.list_len = list_len;
    src.last_len = last_len;
    src.n_lists = n_lists;
    select_topk(src, 0, n_lists * list_len, 1, 1, k_out, max_d, sh, out_d + q * k_out, out_i + q * k_out,
                (brcd_i64)k_out);
}

// ---------------------------------------------------------------------------
// Radius search: count, then emit. Grid: x = query tile, y = database chunk.
// Hits of query q go to [lims[q], lims[q+1]) in arbitrary order (the caller
// sorts each segment by (distance, index)). Dynamic shared memory: qt*W u64.
// ---------------------------------------------------------------------------

template <bool EMIT>
__device__ void radius_pass(const brcd_u64* queries, const brcd_u64* db, int n_q, brcd_i64 n_db, int words,
                            brcd_i64 chunk, int radius, int qt, brcd_u64* counts, const brcd_i64* lims,
                            int* out_d, brcd_i64* out_i) {
    brcd_u64* qs = brcd_smem;
    const int q0 = blockIdx.x * qt;
    const int nq = (n_q - q0 < qt) ? n_q - q0 : qt;
    for (int t = threadIdx.x; t < nq * words; t += blockDim.x) qs[t] = queries[(brcd_i64)q0 * words + t];
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const unsigned lanes_below = (1u << lane) - 1u;
    const brcd_i64 begin = (brcd_i64)blockIdx.y * chunk;
    const brcd_i64 end = (begin + chunk < n_db) ? begin + chunk : n_db;
    // Whole warps step together so that the ballots below see all 32 lanes.
    for (brcd_i64 base = begin + (threadIdx.x & ~31); base < end; base += blockDim.x) {
        const brcd_i64 i = base + lane;
        const bool valid = i < end;
        for (int qi = 0; qi < nq; ++qi) {
            int d = 0;
            if (valid)
                for (int j = 0; j < words; ++j) d += __popcll(db[i * words + j] ^ qs[qi * words + j]);
            const bool hit = valid && d <= radius;
            const unsigned m = __ballot_sync(BRCD_FULL_MASK, hit);
            if (!m) continue;
            brcd_u64* c = counts + (q0 + qi);
            if (!EMIT) {
                if (lane == 0) atomicAdd(c, (brcd_u64)__popc(m));
            } else {
                brcd_u64 first = 0;
                if (lane == 0) first = atomicAdd(c, (brcd_u64)__popc(m));
                first = __shfl_sync(BRCD_FULL_MASK, first, 0);
                if (hit) {
                    const brcd_i64 at = lims[q0 + qi] + (brcd_i64)first + __popc(m & lanes_below);
                    out_d[at] = d;
                    out_i[at] = i;
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(BRCD_THREADS)
brcd_radius_count(const brcd_u64* q, const brcd_u64* db, int n_q, brcd_i64 n_db, int words, brcd_i64 chunk,
                  int radius, int qt, brcd_u64* counts) {
    radius_pass<false>(q, db, n_q, n_db, words, chunk, radius, qt, counts, 0, 0, 0);
}

extern "C" __global__ void __launch_bounds__(BRCD_THREADS)
brcd_radius_emit(const brcd_u64* q, const brcd_u64* db, int n_q, brcd_i64 n_db, int words, brcd_i64 chunk,
                 int radius, int qt, brcd_u64* cursor, const brcd_i64* lims, int* out_d, brcd_i64* out_i) {
    radius_pass<true>(q, db, n_q, n_db, words, chunk, radius, qt, cursor, lims, out_d, out_i);
}

// ---------------------------------------------------------------------------
// All-pairs packed distances (int32) or masked similarities (float32).
// Grid: x = database blocks of BRCD_THREADS, y = query tile. mask_rows is 0
// (no mask: distances), 1 (one mask for all queries) or n_q (one per query).
// Dynamic shared memory: 2 * qt * W u64 + qt * 4.
// ---------------------------------------------------------------------------

extern "C" __global__ void __launch_bounds__(BRCD_THREADS)
brcd_pairwise(const brcd_u64* queries, const brcd_u64* db, const brcd_u64* masks, int mask_rows, int n_q,
              brcd_i64 n_db, int words, int qt, int* out_d, float* out_s) {
    brcd_u64* qs = brcd_smem;
    brcd_u64* ms = qs + qt * words;
    int* weight = (int*)(ms + qt * words);
    const int q0 = blockIdx.y * qt;
    const int nq = (n_q - q0 < qt) ? n_q - q0 : qt;
    for (int t = threadIdx.x; t < nq * words; t += blockDim.x) {
        qs[t] = queries[(brcd_i64)q0 * words + t];
        if (mask_rows > 0) {
            const int qi = t / words;
            const int row = (mask_rows == 1) ? 0 : q0 + qi;
            ms[t] = masks[(brcd_i64)row * words + (t - qi * words)];
        }
    }
    __syncthreads();
    if (mask_rows > 0) {
        for (int qi = threadIdx.x; qi < nq; qi += blockDim.x) {
            int w = 0;
            for (int j = 0; j < words; ++j) w += __popcll(ms[qi * words + j]);
            weight[qi] = w;
        }
        __syncthreads();
    }
    const brcd_i64 i = (brcd_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_db) return;
    for (int qi = 0; qi < nq; ++qi) {
        int d = 0;
        if (mask_rows > 0) {
            for (int j = 0; j < words; ++j) d += __popcll((db[i * words + j] ^ qs[qi * words + j]) & ms[qi * words + j]);
            const int w = weight[qi];
            // (w - 2d) / w in double, as the reference computes it, then rounded once to float.
            out_s[(brcd_i64)(q0 + qi) * n_db + i] = w > 0 ? (float)((double)(w - 2 * d) / (double)w) : 0.0f;
        } else {
            for (int j = 0; j < words; ++j) d += __popcll(db[i * words + j] ^ qs[qi * words + j]);
            out_d[(brcd_i64)(q0 + qi) * n_db + i] = d;
        }
    }
}

// ---------------------------------------------------------------------------
// Dense masked similarity of (relaxed) +-1 codes, the BRCD / NT-Xent logits:
//   out[i, j] = sum_l M[i, l] a[i, l] b[j, l] / w_i,   w_i = sum_l M[i, l],
// and 0 where w_i = 0. mask_stride is 0 for one mask shared by every row of a,
// L for one mask per row; has_mask = 0 means M = 1. Tiles of 16 x 16.
// ---------------------------------------------------------------------------

#define BRCD_TILE 16

template <typename T>
__device__ inline T mask_at(const T* mask, int has_mask, brcd_i64 mask_stride, brcd_i64 i, int l) {
    return has_mask ? mask[i * mask_stride + l] : (T)1;
}

// Grid (ceil(m/16), ceil(n/16)), block (16, 16).
template <typename T>
__device__ void msim_forward(const T* a, const T* b, const T* mask, int has_mask, brcd_i64 mask_stride, int n, int m,
                             int L, T* out) {
    __shared__ T as[BRCD_TILE][BRCD_TILE + 1];
    __shared__ T ms[BRCD_TILE][BRCD_TILE + 1];
    __shared__ T bs[BRCD_TILE][BRCD_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int i = blockIdx.y * BRCD_TILE + ty;  // row of a handled by this thread
    const int j = blockIdx.x * BRCD_TILE + tx;  // row of b handled by this thread
    const int jb = blockIdx.x * BRCD_TILE + ty;  // row of b this thread loads
    T acc = 0, w = 0;
    for (int l0 = 0; l0 < L; l0 += BRCD_TILE) {
        const int l = l0 + tx;
        T mv = 0, av = 0, bv = 0;
        if (i < n && l < L) {
            mv = mask_at(mask, has_mask, mask_stride, i, l);
            av = a[(brcd_i64)i * L + l] * mv;
        }
        if (jb < m && l < L) bv = b[(brcd_i64)jb * L + l];
        as[ty][tx] = av;
        ms[ty][tx] = mv;
        bs[ty][tx] = bv;
        __syncthreads();
#pragma unroll
        for (int t = 0; t < BRCD_TILE; ++t) {
            acc += as[ty][t] * bs[tx][t];
            w += ms[ty][t];
        }
        __syncthreads();
    }
    if (i < n && j < m) out[(brcd_i64)i * m + j] = (w != (T)0) ? acc / w : (T)0;
}

// Backward, row side. Grid (ceil(L/16), ceil(n/16)), block (16, 16): one
// 16 x 16 tile of (rows of a, bits) per block. With gb = G @ b and
// inv_w_i = 1/w_i (0 where w_i = 0):
//   grad_a[i, l]    = M[i, l] gb[i, l] inv_w_i
//   grad_mask[i, l] = inv_w_i a[i, l] gb[i, l]      (when grad_mask is given)
// The full mask gradient is grad_mask[i, l] - inv_w_i r_i with
// r_i = sum_j G[i, j] out[i, j], a row reduction the caller subtracts (it
// needs the forward output and is only wanted for a differentiable mask).
// Blocks of the first bit tile also write inv_w for the column side.
template <typename T>
__device__ void msim_backward_rows(const T* g, const T* a, const T* b, const T* mask, int has_mask,
                                   brcd_i64 mask_stride, int n, int m, int L, T* grad_a, T* grad_mask, T* inv_w) {
    __shared__ T gs[BRCD_TILE][BRCD_TILE + 1];
    __shared__ T bs[BRCD_TILE][BRCD_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int i = blockIdx.y * BRCD_TILE + ty;
    const int l = blockIdx.x * BRCD_TILE + tx;

    // w_i over all L bits: the 16 threads of a row split them, then reduce within their half-warp.
    T wsum = 0;
    if (i < n)
        for (int t = tx; t < L; t += BRCD_TILE) wsum += mask_at(mask, has_mask, mask_stride, i, t);
#pragma unroll
    for (int off = BRCD_TILE / 2; off > 0; off >>= 1) wsum += __shfl_xor_sync(BRCD_FULL_MASK, wsum, off, BRCD_TILE);
    const T iw = (wsum != (T)0) ? (T)1 / wsum : (T)0;

    T acc = 0;
    for (int j0 = 0; j0 < m; j0 += BRCD_TILE) {
        gs[ty][tx] = (i < n && j0 + tx < m) ? g[(brcd_i64)i * m + j0 + tx] : (T)0;
        bs[ty][tx] = (j0 + ty < m && l < L) ? b[(brcd_i64)(j0 + ty) * L + l] : (T)0;
        __syncthreads();
#pragma unroll
        for (int t = 0; t < BRCD_TILE; ++t) acc += gs[ty][t] * bs[t][tx];
        __syncthreads();
    }
    if (i >= n) return;
    if (blockIdx.x == 0 && tx == 0) inv_w[i] = iw;
    if (l >= L) return;
    const brcd_i64 at = (brcd_i64)i * L + l;
    grad_a[at] = mask_at(mask, has_mask, mask_stride, i, l) * acc * iw;
    if (grad_mask) grad_mask[at] = iw * a[at] * acc;
}

// Backward, column side: grad_b[j, l] = sum_i G[i, j] inv_w_i M[i, l] a[i, l].
// Grid (ceil(L/16), ceil(m/16)), block (16, 16); runs after the row side.
template <typename T>
__device__ void msim_backward_cols(const T* g, const T* a, const T* mask, int has_mask, brcd_i64 mask_stride,
                                   const T* inv_w, int n, int m, int L, T* grad_b) {
    __shared__ T gs[BRCD_TILE][BRCD_TILE + 1];
    __shared__ T as[BRCD_TILE][BRCD_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int l = blockIdx.x * BRCD_TILE + tx;
    const int j = blockIdx.y * BRCD_TILE + ty;
    const int jl = blockIdx.y * BRCD_TILE + tx;  // column of G this thread loads
    T acc = 0;
    for (int i0 = 0; i0 < n; i0 += BRCD_TILE) {
        const int il = i0 + ty;
        gs[ty][tx] = (il < n && jl < m) ? g[(brcd_i64)il * m + jl] * inv_w[il] : (T)0;
        as[ty][tx] = (il < n && l < L) ? mask_at(mask, has_mask, mask_stride, il, l) * a[(brcd_i64)il * L + l] : (T)0;
        __syncthreads();
#pragma unroll
        for (int t = 0; t < BRCD_TILE; ++t) acc += gs[t][ty] * as[t][tx];
        __syncthreads();
    }
    if (j < m && l < L) grad_b[(brcd_i64)j * L + l] = acc;
}

#define BRCD_MSIM_KERNELS(T, SUFFIX)                                                                                 \
    extern "C" __global__ void brcd_msim_forward_##SUFFIX(const T* a, const T* b, const T* mask, int has_mask,     \
                                                          brcd_i64 mask_stride, int n, int m, int L, T* out) {    \
        msim_forward<T>(a, b, mask, has_mask, mask_stride, n, m, L, out);                                         \
    }                                                                                                             \
    extern "C" __global__ void brcd_msim_backward_rows_##SUFFIX(const T* g, const T* a, const T* b, const T* mask, \
                                                                int has_mask, brcd_i64 mask_stride, int n, int m, \
                                                                int L, T* grad_a, T* grad_mask, T* inv_w) {       \
        msim_backward_rows<T>(g, a, b, mask, has_mask, mask_stride, n, m, L, grad_a, grad_mask, inv_w);           \
    }                                                                                                             \
    extern "C" __global__ void brcd_msim_backward_cols_##SUFFIX(const T* g, const T* a, const T* mask,            \
                                                                int has_mask, brcd_i64 mask_stride,               \
                                                                const T* inv_w, int n, int m, int L, T* grad_b) { \
        msim_backward_cols<T>(g, a, mask, has_mask, mask_stride, inv_w, n, m, L, grad_b);                         \
    }

BRCD_MSIM_KERNELS(float, f32)
BRCD_MSIM_KERNELS(double, f64)
