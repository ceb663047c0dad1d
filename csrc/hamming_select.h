// Shared pieces of the CPU Hamming kernels: word loads, the database tile the
// scans read, and the exact selector that turns a stream of (distance, index)
// pairs into the k nearest (or every pair within a radius).
//
// Nothing here uses instruction-set extensions, so every scan variant in
// hamming_scan.h can inline it whatever its target.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__GNUC__) || defined(__clang__)
#define BRCD_INLINE inline __attribute__((always_inline))
#define BRCD_NOINLINE __attribute__((noinline))
#else
#define BRCD_INLINE inline
#define BRCD_NOINLINE
#endif

namespace brcd {

BRCD_INLINE uint64_t load_word(const void* p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

// The last n_bytes (< 8) of a row as one word; missing bytes are zero, and zero
// bytes xor (and mask) to zero, so padding never changes a distance.
BRCD_INLINE uint64_t load_tail(const uint8_t* p, size_t n_bytes) {
    uint64_t v = 0;
    for (size_t b = 0; b < n_bytes; ++b) v |= static_cast<uint64_t>(p[b]) << (8 * b);
    return v;
}

// How a tile holds its codes. rows: code j's words are consecutive (the
// caller's array itself wherever a row is whole words, so nothing is copied);
// word_major: word w of every code is consecutive ("vertical", a SIMD register
// holds the same word of consecutive codes without any shuffle), which costs a
// transposed copy unless codes are one word, where both layouts are the same.
enum class Layout { rows, word_major };

// A run of n database codes; code j has database index base + j. Its word w is
// words[j * stride + w] in rows and words[w * stride + j] in word_major.
struct Tile {
    const uint64_t* words;
    Layout layout;
    size_t stride;
    size_t n;
    uint64_t base;
};

// Packed codes of nb bytes per row (n rows) as whole 64-bit words, nw per
// code, the last nb % 8 bytes zero-padded.
inline std::vector<uint64_t> rows_as_words(const uint8_t* rows, size_t n, size_t nb, size_t nw) {
    std::vector<uint64_t> out(n * nw);
    const size_t full = nb / 8, tail = nb % 8;
    for (size_t i = 0; i < n; ++i) {
        const uint8_t* r = rows + i * nb;
        for (size_t w = 0; w < full; ++w) out[i * nw + w] = load_word(r + 8 * w);
        if (tail) out[i * nw + full] = load_tail(r + 8 * full, tail);
    }
    return out;
}

// Database rows [j0, j1) of `db` (nb bytes each) as a Tile in `layout`: the
// rows themselves where a row is whole words (and one-word codes in either
// layout, which are then the same), else a copy into scratch, zero-padded.
inline Tile make_tile(const uint8_t* db, size_t nb, size_t nw, Layout layout, size_t j0, size_t j1,
                      std::vector<uint64_t>& scratch) {
    const size_t n = j1 - j0;
    const bool rows = layout == Layout::rows;
    if (nb == 8 * nw && (rows || nw == 1))
        return Tile{reinterpret_cast<const uint64_t*>(db + j0 * nb), layout, rows ? nw : n, n, j0};
    scratch.resize(nw * n);
    uint64_t* s = scratch.data();
    const size_t full = nb / 8, tail = nb % 8;
    const size_t cs = rows ? nw : 1, ws = rows ? 1 : n;  // word w of code j goes to s[j * cs + w * ws]
    for (size_t j = 0; j < n; ++j) {
        const uint8_t* r = db + (j0 + j) * nb;
        for (size_t w = 0; w < full; ++w) s[j * cs + w * ws] = load_word(r + 8 * w);
        if (tail) s[j * cs + full * ws] = load_tail(r + 8 * full, tail);
    }
    return Tile{s, layout, rows ? nw : n, n, j0};
}

// A (distance, index) pair packed as one sortable key: distance in the top 16
// bits, database index in the low 48. Sorting keys sorts by (distance, index).
constexpr int kIndexBits = 48;
BRCD_INLINE uint64_t make_key(uint32_t d, uint64_t idx) { return (static_cast<uint64_t>(d) << kIndexBits) | idx; }
BRCD_INLINE uint32_t key_distance(uint64_t key) { return static_cast<uint32_t>(key >> kIndexBits); }
BRCD_INLINE uint64_t key_index(uint64_t key) { return key & ((uint64_t{1} << kIndexBits) - 1); }

// Exact streaming selection over integer distances.
//
// Codes arrive in increasing index order. For k-NN the selector keeps thr, the
// smallest distance t at which the candidates seen so far already hold k codes
// with d <= t. A later code with d >= thr can never enter the top k (k codes
// are closer, or equally close with a smaller index), so scans only hand over
// codes with d < thr, which is rare once thr has settled. hist counts kept
// candidates per distance and c = #candidates with d < thr, so lowering thr is
// O(1) per step. Candidates with d > thr are dropped lazily: at most k - 1 with
// d < thr and at most k with d == thr are live, so the buffer is compacted to
// under 2k whenever it reaches its capacity.
//
// For a range search k is "infinite": thr stays at r + 1 and every code with
// d <= r is kept.
struct Selector {
    uint32_t thr = 0;
    size_t c = 0;
    size_t k = 0;
    size_t cap = 0;
    std::vector<uint32_t> hist;
    std::vector<uint64_t> cand;

    void reset_knn(size_t k_, uint32_t n_bits) {
        thr = n_bits + 1;
        c = 0;
        k = k_;
        hist.assign(static_cast<size_t>(n_bits) + 2, 0);
        cand.clear();
        cap = 4 * k_ + 256;
        cand.reserve(std::min<size_t>(cap, 1 << 16));
    }

    void reset_range(uint32_t radius) {
        thr = radius + 1;
        c = 0;
        k = SIZE_MAX;
        hist.assign(static_cast<size_t>(radius) + 2, 0);
        cand.clear();
        cap = SIZE_MAX;
    }

    // Precondition: d < thr. Returns the (possibly lowered) threshold.
    BRCD_INLINE uint32_t push(uint32_t d, uint64_t idx) {
        cand.push_back(make_key(d, idx));
        ++hist[d];
        ++c;
        while (c >= k) {
            --thr;
            c -= hist[thr];
        }
        if (cand.size() >= cap) compact();
        return thr;
    }

    BRCD_NOINLINE void compact() {
        const uint64_t limit = static_cast<uint64_t>(thr + 1) << kIndexBits;
        cand.erase(std::remove_if(cand.begin(), cand.end(), [limit](uint64_t key) { return key >= limit; }),
                   cand.end());
    }

    // The kept candidates sorted by (distance, index), at most `limit` of them.
    // Candidates arrive (and survive compaction) in index order, and hist[d]
    // counts exactly the kept ones for every d <= thr, so one stable counting
    // pass over the distances sorts them: no comparison sort is needed.
    void finish(size_t limit, std::vector<uint64_t>& out) {
        size_t kept = 0;
        for (uint32_t v = 0; v <= thr && v < hist.size(); ++v) {
            const size_t count = hist[v];
            hist[v] = static_cast<uint32_t>(kept);
            kept += count;
        }
        const size_t total = std::min(limit, kept);
        out.resize(total);
        for (const uint64_t key : cand) {
            const uint32_t d = key_distance(key);
            if (d > thr) continue;
            const size_t slot = hist[d]++;
            if (slot < total) out[slot] = key;
        }
        cand.clear();
    }
};

}  // namespace brcd
