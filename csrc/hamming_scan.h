// Per-instruction-set scans of one database tile against one query.
//
// Each variant provides two operations over a Tile (see hamming_select.h):
//   select:    hand every code with distance < selector.thr to the selector;
//   distances: write the distance of every code (int32).
// NW is the number of 64-bit words per code as a compile-time constant
// (1, 2, 4 for 64/128/256-bit codes; 16- and 32-bit codes are zero-padded to
// one word), or 0 for "read nw at run time" (any other width).
//
// The variants are compiled from the same source with the target attributes
// of cpu_features.h and chosen at run time (hamming_cpu.cpp), so the binary
// runs on any x86-64 CPU and uses AVX-512 VPOPCNTDQ only where the CPU has it.
//   avx512: 8 codes per register, VPOPCNTQ, compare into a mask register.
//   avx2:   4 codes per register, popcount by nibble lookup (VPSHUFB) and
//           VPSADBW, compare and movemask.
//   popcnt / portable: one code at a time with the POPCNT instruction or a
//           branch-free bit count (baseline x86-64, or other architectures).
#pragma once

#include "cpu_features.h"  // BRCD_X86_64, BRCD_SIMD_VARIANTS and the target attribute of each level
#include "hamming_select.h"

#if defined(__GNUC__) || defined(__clang__)
#define BRCD_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define BRCD_UNLIKELY(x) (x)
#endif

namespace brcd {

// ---------------------------------------------------------------------------
// Scalar popcount policies
// ---------------------------------------------------------------------------

// Baseline count. On x86-64 without POPCNT, __builtin_popcountll would become a
// library call, so count bits by hand; other 64-bit targets (e.g. AArch64) have
// a fast baseline instruction behind the builtin.
struct PopPortable {
    static BRCD_INLINE uint32_t count(uint64_t x) {
#if (defined(__GNUC__) || defined(__clang__)) && !BRCD_X86_64
        return static_cast<uint32_t>(__builtin_popcountll(x));
#else
        x = x - ((x >> 1) & 0x5555555555555555ULL);
        x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
        x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
        return static_cast<uint32_t>((x * 0x0101010101010101ULL) >> 56);
#endif
    }
};

#if BRCD_SIMD_VARIANTS
// Only ever inlined into functions whose target includes popcnt.
struct PopHardware {
    static BRCD_INLINE uint32_t count(uint64_t x) { return static_cast<uint32_t>(__builtin_popcountll(x)); }
};
#endif

template <size_t NW>
BRCD_INLINE size_t words(size_t nw) {
    return NW ? NW : nw;
}

// Distance of code j of a tile, one word at a time (scalar paths and SIMD tails).
template <class Pop, size_t NW>
BRCD_INLINE uint32_t scalar_distance(const Tile& t, size_t nw, const uint64_t* q, size_t j) {
    uint32_t d = 0;
    for (size_t w = 0; w < words<NW>(nw); ++w) d += Pop::count(q[w] ^ load_word(t.cols + w * t.stride + j));
    return d;
}

template <class Pop, size_t NW>
BRCD_INLINE void scalar_select(const Tile& t, size_t nw, const uint64_t* q, Selector& s) {
    uint32_t thr = s.thr;
    for (size_t j = 0; j < t.n; ++j) {
        const uint32_t d = scalar_distance<Pop, NW>(t, nw, q, j);
        if (d < thr) thr = s.push(d, t.base + j);
    }
}

template <class Pop, size_t NW>
BRCD_INLINE void scalar_distances(const Tile& t, size_t nw, const uint64_t* q, int32_t* out) {
    for (size_t j = 0; j < t.n; ++j) out[j] = static_cast<int32_t>(scalar_distance<Pop, NW>(t, nw, q, j));
}

#if BRCD_SIMD_VARIANTS

// ---------------------------------------------------------------------------
// AVX2: 4 codes per 256-bit register
// ---------------------------------------------------------------------------

// Per-byte popcounts (0..8) by two 16-entry nibble lookups.
BRCD_TARGET_AVX2 BRCD_INLINE __m256i avx2_byte_counts(__m256i v) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                         2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_and_si256(v, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

// Distances of codes j..j+3 as four 64-bit lanes. Byte counts of up to 16
// words are summed as bytes (at most 128 < 256) before one VPSADBW folds them.
template <size_t NW>
BRCD_TARGET_AVX2 BRCD_INLINE __m256i avx2_d4(const Tile& t, size_t nw, const uint64_t* q, size_t j) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i total = zero;
    const size_t n_words = words<NW>(nw);
    for (size_t w0 = 0; w0 < n_words; w0 += 16) {
        const size_t w1 = std::min(n_words, w0 + 16);
        __m256i bytes = zero;
        for (size_t w = w0; w < w1; ++w) {
            const __m256i x = _mm256_xor_si256(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.cols + w * t.stride + j)),
                _mm256_set1_epi64x(static_cast<long long>(q[w])));
            bytes = _mm256_add_epi8(bytes, avx2_byte_counts(x));
        }
        total = _mm256_add_epi64(total, _mm256_sad_epu8(bytes, zero));
    }
    return total;
}

template <size_t NW>
BRCD_TARGET_AVX2 BRCD_INLINE void avx2_take(__m256i d, int mask, uint64_t base, Selector& s) {
    alignas(32) uint64_t lane[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lane), d);
    while (mask) {
        const int l = __builtin_ctz(static_cast<unsigned>(mask));
        mask &= mask - 1;
        const uint32_t dl = static_cast<uint32_t>(lane[l]);
        if (dl < s.thr) s.push(dl, base + static_cast<uint64_t>(l));
    }
}

template <size_t NW>
BRCD_TARGET_AVX2 BRCD_INLINE void avx2_select(const Tile& t, size_t nw, const uint64_t* q, Selector& s) {
    __m256i vt = _mm256_set1_epi64x(s.thr);
    size_t j = 0;
    for (; j + 16 <= t.n; j += 16) {
        const __m256i d0 = avx2_d4<NW>(t, nw, q, j), d1 = avx2_d4<NW>(t, nw, q, j + 4);
        const __m256i d2 = avx2_d4<NW>(t, nw, q, j + 8), d3 = avx2_d4<NW>(t, nw, q, j + 12);
        const __m256i any = _mm256_or_si256(_mm256_or_si256(_mm256_cmpgt_epi64(vt, d0), _mm256_cmpgt_epi64(vt, d1)),
                                            _mm256_or_si256(_mm256_cmpgt_epi64(vt, d2), _mm256_cmpgt_epi64(vt, d3)));
        if (_mm256_testz_si256(any, any)) continue;
        const __m256i ds[4] = {d0, d1, d2, d3};
        for (int u = 0; u < 4; ++u) {
            const int m = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(vt, ds[u])));
            avx2_take<NW>(ds[u], m, t.base + j + 4 * u, s);
        }
        vt = _mm256_set1_epi64x(s.thr);
    }
    for (; j + 4 <= t.n; j += 4) {
        const __m256i d = avx2_d4<NW>(t, nw, q, j);
        const int m = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(vt, d)));
        if (m) {
            avx2_take<NW>(d, m, t.base + j, s);
            vt = _mm256_set1_epi64x(s.thr);
        }
    }
    for (uint32_t thr = s.thr; j < t.n; ++j) {
        const uint32_t d = scalar_distance<PopHardware, NW>(t, nw, q, j);
        if (d < thr) thr = s.push(d, t.base + j);
    }
}

template <size_t NW>
BRCD_TARGET_AVX2 BRCD_INLINE void avx2_distances(const Tile& t, size_t nw, const uint64_t* q, int32_t* out) {
    // Picks the low 32 bits of each 64-bit lane into the lower 128 bits.
    const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    size_t j = 0;
    for (; j + 4 <= t.n; j += 4) {
        const __m256i d = _mm256_permutevar8x32_epi32(avx2_d4<NW>(t, nw, q, j), pick);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm256_castsi256_si128(d));
    }
    for (; j < t.n; ++j) out[j] = static_cast<int32_t>(scalar_distance<PopHardware, NW>(t, nw, q, j));
}

// ---------------------------------------------------------------------------
// AVX-512 VPOPCNTDQ: 8 codes per 512-bit register
// ---------------------------------------------------------------------------

// The query's words broadcast once per scan: fixed widths keep them in
// registers, other widths broadcast from memory inside the loop.
template <size_t NW>
struct QueryVec512 {
    __m512i w[NW ? NW : 1];
    const uint64_t* q;
    BRCD_TARGET_AVX512 explicit QueryVec512(const uint64_t* q_) : q(q_) {
        for (size_t i = 0; i < (NW ? NW : 1); ++i) w[i] = _mm512_set1_epi64(static_cast<long long>(q_[i]));
    }
    BRCD_TARGET_AVX512 BRCD_INLINE __m512i word(size_t i) const {
        return NW ? w[i] : _mm512_set1_epi64(static_cast<long long>(q[i]));
    }
};

// Distances of codes j..j+7 as eight 64-bit lanes. cols/stride are passed by
// value so that the compiler keeps them in registers across selector pushes.
template <size_t NW>
BRCD_TARGET_AVX512 BRCD_INLINE __m512i avx512_d8(const uint64_t* cols, size_t stride, size_t nw,
                                                 const QueryVec512<NW>& qv, size_t j) {
    __m512i d = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(cols + j), qv.word(0)));
    for (size_t w = 1; w < words<NW>(nw); ++w) {
        const __m512i x = _mm512_xor_si512(_mm512_loadu_si512(cols + w * stride + j), qv.word(w));
        d = _mm512_add_epi64(d, _mm512_popcnt_epi64(x));
    }
    return d;
}

BRCD_TARGET_AVX512 BRCD_INLINE void avx512_take(__m512i d, __mmask8 mask, uint64_t base, Selector& s) {
    alignas(64) uint64_t lane[8];
    _mm512_store_si512(lane, d);
    unsigned m = mask;
    while (m) {
        const int l = __builtin_ctz(m);
        m &= m - 1;
        const uint32_t dl = static_cast<uint32_t>(lane[l]);
        if (dl < s.thr) s.push(dl, base + static_cast<uint64_t>(l));
    }
}

template <size_t NW>
BRCD_TARGET_AVX512 BRCD_INLINE void avx512_select(const Tile& t, size_t nw, const uint64_t* q, Selector& s) {
    const QueryVec512<NW> qv(q);
    const uint64_t* const cols = t.cols;
    const size_t stride = t.stride, n = t.n;
    const uint64_t base = t.base;
    __m512i vt = _mm512_set1_epi64(s.thr);
    size_t j = 0;
    // Four registers per step: their masks are tested together, and the rare
    // step with a candidate re-checks each lane against the current threshold.
    for (; j + 32 <= n; j += 32) {
        const __m512i d0 = avx512_d8<NW>(cols, stride, nw, qv, j), d1 = avx512_d8<NW>(cols, stride, nw, qv, j + 8);
        const __m512i d2 = avx512_d8<NW>(cols, stride, nw, qv, j + 16);
        const __m512i d3 = avx512_d8<NW>(cols, stride, nw, qv, j + 24);
        const __mmask8 m0 = _mm512_cmplt_epu64_mask(d0, vt), m1 = _mm512_cmplt_epu64_mask(d1, vt);
        const __mmask8 m2 = _mm512_cmplt_epu64_mask(d2, vt), m3 = _mm512_cmplt_epu64_mask(d3, vt);
        if (BRCD_UNLIKELY((m0 | m1 | m2 | m3) != 0)) {
            avx512_take(d0, m0, base + j, s);
            avx512_take(d1, m1, base + j + 8, s);
            avx512_take(d2, m2, base + j + 16, s);
            avx512_take(d3, m3, base + j + 24, s);
            vt = _mm512_set1_epi64(s.thr);
        }
    }
    for (; j + 8 <= n; j += 8) {
        const __m512i d = avx512_d8<NW>(cols, stride, nw, qv, j);
        const __mmask8 m = _mm512_cmplt_epu64_mask(d, vt);
        if (m) {
            avx512_take(d, m, base + j, s);
            vt = _mm512_set1_epi64(s.thr);
        }
    }
    for (uint32_t thr = s.thr; j < n; ++j) {
        const uint32_t d = scalar_distance<PopHardware, NW>(t, nw, q, j);
        if (d < thr) thr = s.push(d, base + j);
    }
}

template <size_t NW>
BRCD_TARGET_AVX512 BRCD_INLINE void avx512_distances(const Tile& t, size_t nw, const uint64_t* q, int32_t* out) {
    const QueryVec512<NW> qv(q);
    size_t j = 0;
    for (; j + 8 <= t.n; j += 8) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j),
                            _mm512_cvtepi64_epi32(avx512_d8<NW>(t.cols, t.stride, nw, qv, j)));
    }
    for (; j < t.n; ++j) out[j] = static_cast<int32_t>(scalar_distance<PopHardware, NW>(t, nw, q, j));
}

#endif  // BRCD_SIMD_VARIANTS

}  // namespace brcd
