// The scan kernels: every instruction-set variant of "compare a block of
// queries with one database tile", and the table that names them.
//
// A variant provides two operations over a Tile (hamming_select.h) and a block
// of nq queries (query i's nw words at q + i * nw):
//   select:    hand every code with distance < sels[i].thr to sels[i], in index order;
//   distances: write the distance of every code (int32, row i at out + i * out_stride);
// and says which tile layout it reads (rows in place, or a word-major copy).
// NW is the number of 64-bit words per code as a compile-time constant (1, 2,
// 4 for 64/128/256-bit codes; 8..56-bit codes are zero-padded to one word), or
// 0 for "read nw at run time" (any other width).
//
// The x86 variants are compiled from this source with the target attributes of
// cpu_features.h and chosen at run time, so one binary runs on any x86-64 CPU:
//   avx512: 8 codes per register, VPOPCNTQ, compare into a mask register
//           (word-major tiles; a block of fewer than kAvx512RowsBelow queries
//           scans rows in place with the AVX2 kernel instead of paying a copy);
//   avx2:   rows in place for 64/128/256-bit codes: a step compares 4 * U codes
//           in vector registers (nibble lookup with VPSHUFB, both halves summed
//           by one VPSADBW; 128- and 256-bit rows are transposed in registers)
//           and S more codes with scalar POPCNT, so that the vector pipes and
//           the integer pipes of the core work at the same time.
//           docs/kernels.md derives the shapes and their limits. Other widths
//           read a word-major copy, 4 codes per register;
//   popcnt / portable: one code at a time with the POPCNT instruction or a
//           branch-free bit count (baseline x86-64, or any architecture).
// On AArch64 the neon variant (rows, CNT + pairwise ADDP reductions, 8 codes
// per step) runs where the CPU has Advanced SIMD, and the sve variant (rows
// de-interleaved by structure loads, a per-lane CNT, any vector length) where
// it has the Scalable Vector Extension.
//
// Nothing here depends on Python: the extension (hamming_cpu.cpp) and the C++
// test driver (csrc/tests/scan_test.cpp) include this same file.
#pragma once

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.h"  // BRCD_X86_64, BRCD_NEON, BRCD_SIMD_VARIANTS and the target attribute of each level
#include "hamming_select.h"

#if defined(__GNUC__) || defined(__clang__)
#define BRCD_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define BRCD_LIKELY(x) __builtin_expect(!!(x), 1)
#else
#define BRCD_UNLIKELY(x) (x)
#define BRCD_LIKELY(x) (x)
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

// Where word w of code j lies, in layout L (stride as in Tile).
template <Layout L>
BRCD_INLINE const uint64_t* word_at(const uint64_t* words_, size_t stride, size_t j, size_t w) {
    return L == Layout::rows ? words_ + j * stride + w : words_ + w * stride + j;
}

// Distance of code j, one word at a time (scalar paths, SIMD tails and re-checks).
template <class Pop, size_t NW, Layout L>
BRCD_INLINE uint32_t scalar_distance(const uint64_t* words_, size_t stride, size_t nw, const uint64_t* q, size_t j) {
    uint32_t d = 0;
    for (size_t w = 0; w < words<NW>(nw); ++w) d += Pop::count(q[w] ^ load_word(word_at<L>(words_, stride, j, w)));
    return d;
}

// Codes [j0, j1) of a tile into the selector, in index order. The tile's
// fields and fixed-width query words are copied to locals: a push writes
// memory, which would otherwise make the compiler reload them for every code.
template <class Pop, size_t NW, Layout L>
BRCD_INLINE void scalar_select_range(const Tile& t, size_t nw, const uint64_t* q, size_t j0, size_t j1, Selector& s) {
    const uint64_t* const words_ = t.words;
    const size_t stride = t.stride;
    const uint64_t base = t.base;
    uint64_t fixed[NW ? NW : 1];
    for (size_t w = 0; w < NW; ++w) fixed[w] = q[w];
    const uint64_t* qw = NW ? fixed : q;
    uint32_t thr = s.thr;
    for (size_t j = j0; j < j1; ++j) {
        const uint32_t d = scalar_distance<Pop, NW, L>(words_, stride, nw, qw, j);
        if (BRCD_UNLIKELY(d < thr)) thr = s.push(d, base + j);
    }
}

template <class Pop, size_t NW, Layout L>
BRCD_INLINE void scalar_select(const Tile& t, size_t nw, const uint64_t* q, size_t nq, Selector* sels) {
    for (size_t i = 0; i < nq; ++i) scalar_select_range<Pop, NW, L>(t, nw, q + i * words<NW>(nw), 0, t.n, sels[i]);
}

template <class Pop, size_t NW, Layout L>
BRCD_INLINE void scalar_distances(const Tile& t, size_t nw, const uint64_t* q, size_t nq, int32_t* out,
                                  size_t out_stride) {
    for (size_t i = 0; i < nq; ++i) {
        const uint64_t* qi = q + i * words<NW>(nw);
        int32_t* o = out + i * out_stride;
        for (size_t j = 0; j < t.n; ++j)
            o[j] = static_cast<int32_t>(scalar_distance<Pop, NW, L>(t.words, t.stride, nw, qi, j));
    }
}

// The portable kernels read either layout (they are given rows: no copy for whole-word codes).
template <class Pop, size_t NW>
BRCD_INLINE void scalar_select_tile(const Tile& t, size_t nw, const uint64_t* q, size_t nq, Selector* sels) {
    if (t.layout == Layout::rows)
        scalar_select<Pop, NW, Layout::rows>(t, nw, q, nq, sels);
    else
        scalar_select<Pop, NW, Layout::word_major>(t, nw, q, nq, sels);
}

template <class Pop, size_t NW>
BRCD_INLINE void scalar_distances_tile(const Tile& t, size_t nw, const uint64_t* q, size_t nq, int32_t* out,
                                       size_t out_stride) {
    if (t.layout == Layout::rows)
        scalar_distances<Pop, NW, Layout::rows>(t, nw, q, nq, out, out_stride);
    else
        scalar_distances<Pop, NW, Layout::word_major>(t, nw, q, nq, out, out_stride);
}

inline Layout rows_layout(size_t /*nw*/, size_t /*block*/) { return Layout::rows; }

// ---------------------------------------------------------------------------
// The variants: one row of entry points per instruction set
// ---------------------------------------------------------------------------

using SelectFn = void (*)(const Tile&, size_t nw, const uint64_t* q, size_t nq, Selector* sels);
using DistancesFn = void (*)(const Tile&, size_t nw, const uint64_t* q, size_t nq, int32_t* out, size_t out_stride);
using LayoutFn = Layout (*)(size_t nw, size_t block);

struct ScanVariant {
    Simd level;
    LayoutFn layout;  // the tile layout it reads for nw-word codes scanned by blocks of `block` queries
    SelectFn select;
    DistancesFn distances;
};

// Calls BODY(NW) with the word count as a constant for 64-, 128- and 256-bit
// codes (and 8..56-bit codes, padded to one word); 0 means "read it at run time".
#define BRCD_NW_SWITCH(NW_RT, BODY) \
    switch (NW_RT) {                \
        case 1: BODY(1); break;     \
        case 2: BODY(2); break;     \
        case 4: BODY(4); break;     \
        default: BODY(0); break;    \
    }

// Non-inline entry points: the target attribute on these decides which
// instructions the inlined kernels may use.
#define BRCD_DEFINE_SCAN(SUFFIX, ATTR, LAYOUT, SELECT, DISTANCES)                                                 \
    inline ATTR void scan_select_##SUFFIX(const Tile& t, size_t nw, const uint64_t* q, size_t nq, Selector* s) { \
        BRCD_NW_SWITCH(nw, SELECT)                                                                               \
    }                                                                                                            \
    inline ATTR void scan_distances_##SUFFIX(const Tile& t, size_t nw, const uint64_t* q, size_t nq, int32_t* o,  \
                                             size_t os) {                                                        \
        BRCD_NW_SWITCH(nw, DISTANCES)                                                                            \
    }                                                                                                            \
    inline const ScanVariant kScan_##SUFFIX = {Simd::SUFFIX, LAYOUT, scan_select_##SUFFIX, scan_distances_##SUFFIX};

#define BRCD_SEL_PORTABLE(NW) scalar_select_tile<PopPortable, NW>(t, nw, q, nq, s)
#define BRCD_DIST_PORTABLE(NW) scalar_distances_tile<PopPortable, NW>(t, nw, q, nq, o, os)
BRCD_DEFINE_SCAN(scalar, , rows_layout, BRCD_SEL_PORTABLE, BRCD_DIST_PORTABLE)

// The two step shapes of the AVX2 rows kernel (Avx2Shape below says what they
// are). Known on every architecture, so that the entry points and reports can
// name them; only x86-64 builds have the kernel.
enum class Avx2Step : int { wide = 0, narrow = 1 };

constexpr const char* kAvx2StepEnv = "BRCD_AVX2_STEP";

// The shape the scans of this process use; the entry points set it from
// BRCD_AVX2_STEP before each scan (parse_avx2_step), so a test can switch it.
inline std::atomic<int>& avx2_step_slot() {
    static std::atomic<int> slot{static_cast<int>(Avx2Step::wide)};
    return slot;
}

inline const char* avx2_step_name(Avx2Step k) { return k == Avx2Step::narrow ? "narrow" : "wide"; }

// The shape a BRCD_AVX2_STEP value asks for (empty or auto: wide).
inline Avx2Step parse_avx2_step(const std::string& value) {
    const std::string name = normalised_simd_name(value);
    if (name.empty() || name == "auto" || name == "wide") return Avx2Step::wide;
    if (name == "narrow") return Avx2Step::narrow;
    throw ChoiceError("unknown AVX2 step shape '" + value + "' (from environment variable " +
                                kAvx2StepEnv + "); choose wide, narrow, or auto (or empty) for wide");
}

inline Avx2Step avx2_step_from_env() {
    const char* env = std::getenv(kAvx2StepEnv);
    return parse_avx2_step(env ? std::string(env) : std::string());
}

#if BRCD_SIMD_VARIANTS

// ---------------------------------------------------------------------------
// AVX2
// ---------------------------------------------------------------------------

// Popcount by nibble lookup: for a byte b with nibbles l and h, lut[l] counts
// l's bits and lut_c[h] is 8 minus h's, so |lut[l] - lut_c[h]| = 8 - popcount(b),
// and one VPSADBW of the two lookups sums a 64-bit lane's 8 bytes:
// 64 - popcount(lane) with no separate add. Over several words the lookups are
// summed as bytes first (each side stays below 256 for up to 31 words), and the
// lane holds 64 * words - distance.
BRCD_TARGET_AVX2 BRCD_INLINE __m256i avx2_nibble_lut() {
    return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3,
                            3, 4);
}
BRCD_TARGET_AVX2 BRCD_INLINE __m256i avx2_nibble_lut_complement() {
    return _mm256_setr_epi8(8, 7, 7, 6, 7, 6, 6, 5, 7, 6, 6, 5, 6, 5, 5, 4, 8, 7, 7, 6, 7, 6, 6, 5, 7, 6, 6, 5, 6, 5,
                            5, 4);
}

// The two nibbles of every byte, each in the low half of its byte (indices for VPSHUFB).
struct Nibbles {
    __m256i lo, hi;
};
BRCD_TARGET_AVX2 BRCD_INLINE Nibbles avx2_nibbles(__m256i v) {
    const __m256i low = _mm256_set1_epi8(0x0f);
    return {_mm256_and_si256(v, low), _mm256_and_si256(_mm256_srli_epi16(v, 4), low)};
}

// Four codes of NW words from rows in place: word w of the four codes in w[w].
// Code c of the four sits in lane kLaneOf[c] (NW = 2 interleaves them by its
// unpack; a selection re-checks hits in index order and the distances undo it).
template <size_t NW>
struct Avx2Rows;
template <>
struct Avx2Rows<1> {
    static constexpr int kLaneOf[4] = {0, 1, 2, 3};
    static BRCD_TARGET_AVX2 BRCD_INLINE void load(const uint64_t* p, __m256i* w) {
        w[0] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    }
};
template <>
struct Avx2Rows<2> {
    static constexpr int kLaneOf[4] = {0, 2, 1, 3};
    static BRCD_TARGET_AVX2 BRCD_INLINE void load(const uint64_t* p, __m256i* w) {
        const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 4));
        w[0] = _mm256_unpacklo_epi64(a, b);
        w[1] = _mm256_unpackhi_epi64(a, b);
    }
};
template <>
struct Avx2Rows<4> {
    static constexpr int kLaneOf[4] = {0, 1, 2, 3};
    static BRCD_TARGET_AVX2 BRCD_INLINE void load(const uint64_t* p, __m256i* w) {
        const __m256i c0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        const __m256i c1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 4));
        const __m256i c2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8));
        const __m256i c3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 12));
        const __m256i t0 = _mm256_unpacklo_epi64(c0, c1), t1 = _mm256_unpackhi_epi64(c0, c1);
        const __m256i t2 = _mm256_unpacklo_epi64(c2, c3), t3 = _mm256_unpackhi_epi64(c2, c3);
        w[0] = _mm256_permute2x128_si256(t0, t2, 0x20);
        w[1] = _mm256_permute2x128_si256(t1, t3, 0x20);
        w[2] = _mm256_permute2x128_si256(t0, t2, 0x31);
        w[3] = _mm256_permute2x128_si256(t1, t3, 0x31);
    }
};

// How a rows step is shaped for NW-word codes: U registers of 4 codes go
// through the vector pipes and S more codes through scalar POPCNT. Two shapes
// are compiled, and BRCD_AVX2_STEP chooses between them at run time:
//   wide:   measured best on an AMD Zen 5 core (8 macro-ops dispatched per
//           cycle), where about 62% of the codes on the vector pipes balances
//           them against dispatch (docs/kernels.md derives the split);
//   narrow: about 80% of the codes on the vector pipes, the balance the same
//           model gives for a 6-wide core (Zen 2/3, Intel before Golden Cove).
// wide is the default everywhere until a 6-wide core has measured both;
// scripts/avx2_check.sh times the two in one run.
template <size_t NW, Avx2Step K>
struct Avx2Shape {
    static_assert(NW == 1 || NW == 2 || NW == 4, "rows steps come in 64-, 128- and 256-bit widths");
    static constexpr bool kWide = K == Avx2Step::wide;
    // 64-bit: 16 vector codes + 10 (wide) or 4 (narrow) scalar; 128/256-bit: 8 vector + 4 or 2 scalar.
    static constexpr int U = NW == 1 ? 4 : 2;
    static constexpr int S = NW == 1 ? (kWide ? 10 : 4) : (kWide ? 4 : 2);
};

// One query: its words broadcast, and its threshold as the step compares it.
template <size_t NW>
struct Avx2Query {
    __m256i word[NW];
    __m256i limit;  // 64 * NW - thr: a lane's VPSADBW value exceeds it exactly when its distance is below thr
    uint64_t q[NW];  // a local copy, so the scalar codes compare against registers
    uint32_t thr;

    BRCD_TARGET_AVX2 explicit Avx2Query(const uint64_t* q_) {
        for (size_t w = 0; w < NW; ++w) {
            q[w] = q_[w];
            word[w] = _mm256_set1_epi64x(static_cast<long long>(q[w]));
        }
        set_thr(0);
    }
    BRCD_TARGET_AVX2 BRCD_INLINE void set_thr(uint32_t t) {
        thr = t;
        limit = _mm256_set1_epi64x(static_cast<long long>(64 * NW) - static_cast<long long>(t));
    }
};

// 64 * NW - distance per lane, for four codes given as one register per word.
template <size_t NW>
BRCD_TARGET_AVX2 BRCD_INLINE __m256i avx2_complement_counts(const __m256i* code, const Avx2Query<NW>& qv) {
    const __m256i lut = avx2_nibble_lut(), lut_c = avx2_nibble_lut_complement();
    __m256i a = _mm256_setzero_si256(), b = a;
    for (size_t w = 0; w < NW; ++w) {
        const Nibbles n = avx2_nibbles(_mm256_xor_si256(code[w], qv.word[w]));
        const __m256i ca = _mm256_shuffle_epi8(lut, n.lo), cb = _mm256_shuffle_epi8(lut_c, n.hi);
        a = w ? _mm256_add_epi8(a, ca) : ca;
        b = w ? _mm256_add_epi8(b, cb) : cb;
    }
    return _mm256_sad_epu8(a, b);
}

template <size_t NW>
BRCD_TARGET_AVX2 BRCD_INLINE uint32_t avx2_row_distance(const uint64_t* row, const uint64_t* q) {
    uint32_t d = 0;
    for (size_t w = 0; w < NW; ++w) d += PopHardware::count(load_word(row + w) ^ q[w]);
    return d;
}

// The codes of one step below the query's threshold into its selector, in
// index order. A hit is rare, so the vector counts are recomputed here; every
// code's distance and a bit mask of the candidates (bit b: code j + b) are
// formed without branches, and only the candidates are visited.
template <size_t NW, int U, int S>
BRCD_TARGET_AVX2 BRCD_INLINE void avx2_rows_take(const Tile& t, size_t j, const __m256i (*code)[NW],
                                                 Avx2Query<NW>& qv, Selector& s) {
    static_assert(4 * U + S <= 32, "a step's candidates fit one 32-bit mask");
    const uint64_t* step = t.words + j * NW;
    uint32_t dist[4 * U + S];
    for (int u = 0; u < U; ++u) {
        alignas(32) uint64_t lane[4];
        _mm256_store_si256(reinterpret_cast<__m256i*>(lane), avx2_complement_counts<NW>(code[u], qv));
        for (int k = 0; k < 4; ++k) dist[4 * u + k] = static_cast<uint32_t>(64 * NW - lane[Avx2Rows<NW>::kLaneOf[k]]);
    }
    for (int k = 0; k < S; ++k) dist[4 * U + k] = avx2_row_distance<NW>(step + (4 * U + k) * NW, qv.q);
    uint32_t below = 0;
    for (int b = 0; b < 4 * U + S; ++b) below |= static_cast<uint32_t>(dist[b] < s.thr) << b;
    while (below) {
        const int b = __builtin_ctz(below);
        below &= below - 1;
        if (dist[b] < s.thr) s.push(dist[b], t.base + j + static_cast<uint64_t>(b));
    }
    qv.set_thr(s.thr);
}

// Selection over rows in place for one query (see the file comment for the
// step). Hits are rare once the threshold settles, so a step only asks whether
// any code is below it: the VPSADBW values of the U registers are folded by a
// byte-wise maximum (never below the largest value, and equal to it while every
// value is at most the limit, so no hit is lost) and compared once, and a
// scalar code leaves at the first hit. A step with a hit hands its codes below
// the threshold to the selector, in index order.
template <size_t NW, int U, int S>
BRCD_TARGET_AVX2 BRCD_INLINE void avx2_rows_select_one(const Tile& t, const uint64_t* q, Selector& s) {
    constexpr size_t kStep = 4 * U + S;
    Avx2Query<NW> qv(q);
    qv.set_thr(s.thr);
    const uint64_t* const rows = t.words;
    const size_t n = t.n;
    size_t j = 0;
    for (; j + kStep <= n; j += kStep) {
        const uint64_t* step = rows + j * NW;
        __m256i code[U][NW];
        for (int u = 0; u < U; ++u) Avx2Rows<NW>::load(step + 4 * u * NW, code[u]);
        __m256i top = avx2_complement_counts<NW>(code[0], qv);
        for (int u = 1; u < U; ++u) top = _mm256_max_epu8(top, avx2_complement_counts<NW>(code[u], qv));
        const __m256i any = _mm256_cmpgt_epi64(top, qv.limit);
        if (BRCD_UNLIKELY(!_mm256_testz_si256(any, any))) goto take;
        for (int c = 0; c < S; ++c)
            if (BRCD_UNLIKELY(avx2_row_distance<NW>(step + (4 * U + c) * NW, qv.q) < qv.thr)) goto take;
        continue;
    take:
        avx2_rows_take<NW, U, S>(t, j, code, qv, s);
    }
    scalar_select_range<PopHardware, NW, Layout::rows>(t, NW, qv.q, j, n, s);
}

template <size_t NW, Avx2Step K>
BRCD_TARGET_AVX2 BRCD_INLINE void avx2_rows_select_shaped(const Tile& t, const uint64_t* q, size_t nq, Selector* sels) {
    for (size_t i = 0; i < nq; ++i)
        avx2_rows_select_one<NW, Avx2Shape<NW, K>::U, Avx2Shape<NW, K>::S>(t, q + i * NW, sels[i]);
}

template <size_t NW>
BRCD_TARGET_AVX2 BRCD_INLINE void avx2_rows_select(const Tile& t, const uint64_t* q, size_t nq, Selector* sels) {
    if (avx2_step_slot().load(std::memory_order_relaxed) == static_cast<int>(Avx2Step::narrow))
        return avx2_rows_select_shaped<NW, Avx2Step::narrow>(t, q, nq, sels);
    avx2_rows_select_shaped<NW, Avx2Step::wide>(t, q, nq, sels);
}

template <size_t NW>
BRCD_TARGET_AVX2 BRCD_INLINE void avx2_rows_distances(const Tile& t, const uint64_t* q, size_t nq, int32_t* out,
                                                     size_t out_stride) {
    // Picks the low 32 bits of the 64-bit lanes holding codes 0, 1, 2, 3 into the lower 128 bits.
    using R = Avx2Rows<NW>;
    const __m256i pick = _mm256_setr_epi32(2 * R::kLaneOf[0], 2 * R::kLaneOf[1], 2 * R::kLaneOf[2],
                                           2 * R::kLaneOf[3], 1, 3, 5, 7);
    const __m256i full = _mm256_set1_epi64x(64 * NW);
    for (size_t i = 0; i < nq; ++i) {
        const Avx2Query<NW> qv(q + i * NW);
        int32_t* o = out + i * out_stride;
        size_t j = 0;
        for (; j + 4 <= t.n; j += 4) {
            __m256i code[NW];
            R::load(t.words + j * NW, code);
            const __m256i d = _mm256_sub_epi64(full, avx2_complement_counts<NW>(code, qv));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(o + j),
                             _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(d, pick)));
        }
        for (; j < t.n; ++j) o[j] = static_cast<int32_t>(avx2_row_distance<NW>(t.words + j * NW, qv.q));
    }
}

// Word-major tiles (widths other than 64/128/256 bits): 4 codes per register,
// one query at a time, byte counts of up to 16 words summed before one VPSADBW.
template <size_t NW>
BRCD_TARGET_AVX2 BRCD_INLINE __m256i avx2_d4(const Tile& t, size_t nw, const uint64_t* q, size_t j) {
    const __m256i lut = avx2_nibble_lut(), lut_c = avx2_nibble_lut_complement();
    __m256i total = _mm256_setzero_si256();
    const size_t n_words = words<NW>(nw);
    for (size_t w0 = 0; w0 < n_words; w0 += 16) {
        const size_t w1 = std::min(n_words, w0 + 16);
        __m256i a = _mm256_setzero_si256(), b = a;
        for (size_t w = w0; w < w1; ++w) {
            const Nibbles n = avx2_nibbles(
                _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.words + w * t.stride + j)),
                                 _mm256_set1_epi64x(static_cast<long long>(q[w]))));
            a = _mm256_add_epi8(a, _mm256_shuffle_epi8(lut, n.lo));
            b = _mm256_add_epi8(b, _mm256_shuffle_epi8(lut_c, n.hi));
        }
        // b - a per byte is 8 * (w1 - w0) - popcount of that byte over the words.
        total = _mm256_add_epi64(total, _mm256_sub_epi64(_mm256_set1_epi64x(static_cast<long long>(64 * (w1 - w0))),
                                                         _mm256_sad_epu8(a, b)));
    }
    return total;
}

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
BRCD_TARGET_AVX2 BRCD_INLINE void avx2_columns_select(const Tile& t, size_t nw, const uint64_t* q, Selector& s) {
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
            avx2_take(ds[u], m, t.base + j + 4 * u, s);
        }
        vt = _mm256_set1_epi64x(s.thr);
    }
    for (; j + 4 <= t.n; j += 4) {
        const __m256i d = avx2_d4<NW>(t, nw, q, j);
        const int m = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(vt, d)));
        if (m) {
            avx2_take(d, m, t.base + j, s);
            vt = _mm256_set1_epi64x(s.thr);
        }
    }
    scalar_select_range<PopHardware, NW, Layout::word_major>(t, nw, q, j, t.n, s);
}

template <size_t NW>
BRCD_TARGET_AVX2 BRCD_INLINE void avx2_columns_distances(const Tile& t, size_t nw, const uint64_t* q, int32_t* out) {
    const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    size_t j = 0;
    for (; j + 4 <= t.n; j += 4) {
        const __m256i d = _mm256_permutevar8x32_epi32(avx2_d4<NW>(t, nw, q, j), pick);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm256_castsi256_si128(d));
    }
    for (; j < t.n; ++j) out[j] = static_cast<int32_t>(scalar_distance<PopHardware, NW, Layout::word_major>(t.words, t.stride, nw, q, j));
}

// The AVX2 kernels for a tile of either layout (rows only come with NW = 1, 2 or 4).
template <size_t NW>
BRCD_TARGET_AVX2 BRCD_INLINE void avx2_select(const Tile& t, size_t nw, const uint64_t* q, size_t nq, Selector* sels) {
    if constexpr (NW == 1 || NW == 2 || NW == 4) {
        if (t.layout == Layout::rows) return avx2_rows_select<NW>(t, q, nq, sels);
    }
    for (size_t i = 0; i < nq; ++i) avx2_columns_select<NW>(t, nw, q + i * words<NW>(nw), sels[i]);
}

template <size_t NW>
BRCD_TARGET_AVX2 BRCD_INLINE void avx2_distances(const Tile& t, size_t nw, const uint64_t* q, size_t nq, int32_t* out,
                                                size_t out_stride) {
    if constexpr (NW == 1 || NW == 2 || NW == 4) {
        if (t.layout == Layout::rows) return avx2_rows_distances<NW>(t, q, nq, out, out_stride);
    }
    for (size_t i = 0; i < nq; ++i) avx2_columns_distances<NW>(t, nw, q + i * words<NW>(nw), out + i * out_stride);
}

inline Layout avx2_layout(size_t nw, size_t /*block*/) {
    return (nw == 1 || nw == 2 || nw == 4) ? Layout::rows : Layout::word_major;
}

// ---------------------------------------------------------------------------
// AVX-512 VPOPCNTDQ: 8 codes per 512-bit register, word-major tiles
// ---------------------------------------------------------------------------

// Below this many queries per block, transposing a tile costs more than the
// AVX2 rows kernel loses to VPOPCNTQ, so 128- and 256-bit codes scan rows.
constexpr size_t kAvx512RowsBelow = 8;

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

// Distances of codes j..j+7 as eight 64-bit lanes. words/stride are passed by
// value so that the compiler keeps them in registers across selector pushes.
template <size_t NW>
BRCD_TARGET_AVX512 BRCD_INLINE __m512i avx512_d8(const uint64_t* words_, size_t stride, size_t nw,
                                                 const QueryVec512<NW>& qv, size_t j) {
    __m512i d = _mm512_popcnt_epi64(_mm512_xor_si512(_mm512_loadu_si512(words_ + j), qv.word(0)));
    for (size_t w = 1; w < words<NW>(nw); ++w) {
        const __m512i x = _mm512_xor_si512(_mm512_loadu_si512(words_ + w * stride + j), qv.word(w));
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
BRCD_TARGET_AVX512 BRCD_INLINE void avx512_columns_select(const Tile& t, size_t nw, const uint64_t* q, Selector& s) {
    const QueryVec512<NW> qv(q);
    const uint64_t* const words_ = t.words;
    const size_t stride = t.stride, n = t.n;
    const uint64_t base = t.base;
    __m512i vt = _mm512_set1_epi64(s.thr);
    size_t j = 0;
    // Four registers per step: their masks are tested together, and the rare
    // step with a candidate re-checks each lane against the current threshold.
    for (; j + 32 <= n; j += 32) {
        const __m512i d0 = avx512_d8<NW>(words_, stride, nw, qv, j), d1 = avx512_d8<NW>(words_, stride, nw, qv, j + 8);
        const __m512i d2 = avx512_d8<NW>(words_, stride, nw, qv, j + 16);
        const __m512i d3 = avx512_d8<NW>(words_, stride, nw, qv, j + 24);
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
        const __m512i d = avx512_d8<NW>(words_, stride, nw, qv, j);
        const __mmask8 m = _mm512_cmplt_epu64_mask(d, vt);
        if (m) {
            avx512_take(d, m, base + j, s);
            vt = _mm512_set1_epi64(s.thr);
        }
    }
    scalar_select_range<PopHardware, NW, Layout::word_major>(t, nw, q, j, n, s);
}

template <size_t NW>
BRCD_TARGET_AVX512 BRCD_INLINE void avx512_columns_distances(const Tile& t, size_t nw, const uint64_t* q,
                                                             int32_t* out) {
    const QueryVec512<NW> qv(q);
    size_t j = 0;
    for (; j + 8 <= t.n; j += 8) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j),
                            _mm512_cvtepi64_epi32(avx512_d8<NW>(t.words, t.stride, nw, qv, j)));
    }
    for (; j < t.n; ++j) out[j] = static_cast<int32_t>(scalar_distance<PopHardware, NW, Layout::word_major>(t.words, t.stride, nw, q, j));
}

template <size_t NW>
BRCD_TARGET_AVX512 BRCD_INLINE void avx512_select(const Tile& t, size_t nw, const uint64_t* q, size_t nq,
                                                  Selector* sels) {
    if constexpr (NW == 2 || NW == 4) {
        if (t.layout == Layout::rows) return avx2_rows_select<NW>(t, q, nq, sels);
    }
    for (size_t i = 0; i < nq; ++i) avx512_columns_select<NW>(t, nw, q + i * words<NW>(nw), sels[i]);
}

template <size_t NW>
BRCD_TARGET_AVX512 BRCD_INLINE void avx512_distances(const Tile& t, size_t nw, const uint64_t* q, size_t nq,
                                                     int32_t* out, size_t out_stride) {
    if constexpr (NW == 2 || NW == 4) {
        if (t.layout == Layout::rows) return avx2_rows_distances<NW>(t, q, nq, out, out_stride);
    }
    for (size_t i = 0; i < nq; ++i) avx512_columns_distances<NW>(t, nw, q + i * words<NW>(nw), out + i * out_stride);
}

inline Layout avx512_layout(size_t nw, size_t block) {
    return ((nw == 2 || nw == 4) && block < kAvx512RowsBelow) ? Layout::rows : Layout::word_major;
}

#define BRCD_SEL_POPCNT(NW) scalar_select_tile<PopHardware, NW>(t, nw, q, nq, s)
#define BRCD_DIST_POPCNT(NW) scalar_distances_tile<PopHardware, NW>(t, nw, q, nq, o, os)
BRCD_DEFINE_SCAN(popcnt, BRCD_TARGET_POPCNT, rows_layout, BRCD_SEL_POPCNT, BRCD_DIST_POPCNT)
#define BRCD_SEL_AVX2(NW) avx2_select<NW>(t, nw, q, nq, s)
#define BRCD_DIST_AVX2(NW) avx2_distances<NW>(t, nw, q, nq, o, os)
BRCD_DEFINE_SCAN(avx2, BRCD_TARGET_AVX2, avx2_layout, BRCD_SEL_AVX2, BRCD_DIST_AVX2)
#define BRCD_SEL_AVX512(NW) avx512_select<NW>(t, nw, q, nq, s)
#define BRCD_DIST_AVX512(NW) avx512_distances<NW>(t, nw, q, nq, o, os)
BRCD_DEFINE_SCAN(avx512, BRCD_TARGET_AVX512, avx512_layout, BRCD_SEL_AVX512, BRCD_DIST_AVX512)


#endif  // BRCD_SIMD_VARIANTS

#if BRCD_NEON

// ---------------------------------------------------------------------------
// NEON (AArch64 Advanced SIMD): rows in place, 8 codes per step
// ---------------------------------------------------------------------------

// Byte popcounts of 16 code bytes xor 16 query bytes (byte loads: rows may sit at any address).
BRCD_INLINE uint8x16_t neon_counts(const uint64_t* p, uint8x16_t q) {
    return vcntq_u8(veorq_u8(vld1q_u8(reinterpret_cast<const uint8_t*>(p)), q));
}

BRCD_INLINE uint8x16_t neon_query(const uint64_t* q, size_t w0, size_t nw) {
    const uint64_t lo = q[w0 % nw], hi = q[(w0 + 1) % nw];
    return vreinterpretq_u8_u64(vcombine_u64(vcreate_u64(lo), vcreate_u64(hi)));
}

// Distances of 8 consecutive codes: 64-bit codes as 8 bytes, wider ones as 8 halfwords.
// Pairwise additions (ADDP) halve the bytes per code at each level, so no code's
// sum ever mixes with another's; each level's sums stay below 256 up to 128 bits.
BRCD_INLINE uint8x8_t neon_d8_64(const uint64_t* p, uint8x16_t q) {
    const uint8x16_t c0 = neon_counts(p, q), c1 = neon_counts(p + 2, q);
    const uint8x16_t c2 = neon_counts(p + 4, q), c3 = neon_counts(p + 6, q);
    const uint8x16_t l2 = vpaddq_u8(vpaddq_u8(c0, c1), vpaddq_u8(c2, c3));
    return vget_low_u8(vpaddq_u8(l2, l2));
}

// Per code, the byte counts of its 16-byte chunks (at most 2 for NW <= 4).
template <size_t NW>
BRCD_INLINE uint8x16_t neon_code_counts(const uint64_t* row, const uint8x16_t* q) {
    uint8x16_t c = neon_counts(row, q[0]);
    if (NW == 4) c = vaddq_u8(c, neon_counts(row + 2, q[1]));
    return c;
}

template <size_t NW>
BRCD_INLINE uint16x8_t neon_d8_wide(const uint64_t* p, const uint8x16_t* q) {
    uint8x16_t c[8];
    for (int k = 0; k < 8; ++k) c[k] = neon_code_counts<NW>(p + k * NW, q);
    const uint8x16_t a = vpaddq_u8(vpaddq_u8(c[0], c[1]), vpaddq_u8(c[2], c[3]));
    const uint8x16_t b = vpaddq_u8(vpaddq_u8(c[4], c[5]), vpaddq_u8(c[6], c[7]));
    // Two sums per code, each at most 128: widened by the last pairwise step (256-bit codes reach 256).
    return vpaddlq_u8(vpaddq_u8(a, b));
}

// Any width: each code's 16-byte chunks accumulated as halfwords (UADALP), then summed.
BRCD_INLINE uint32_t neon_row_distance(const uint64_t* row, const uint64_t* q, size_t nw) {
    uint16x8_t acc = vdupq_n_u16(0);
    size_t w = 0;
    for (; w + 2 <= nw; w += 2) acc = vpadalq_u8(acc, neon_counts(row + w, neon_query(q, w, nw)));
    uint32_t d = vaddvq_u16(acc);
    if (w < nw) d += static_cast<uint32_t>(__builtin_popcountll(load_word(row + w) ^ q[w]));
    return d;
}

template <size_t NW>
BRCD_INLINE void neon_queries(const uint64_t* q, uint8x16_t* qv) {
    for (size_t w = 0; w < (NW == 4 ? 2 : 1); ++w) qv[w] = neon_query(q, 2 * w, NW);
}

template <size_t NW>
BRCD_INLINE void neon_rows_select_one(const Tile& t, const uint64_t* q, Selector& s) {
    uint8x16_t qv[2];
    neon_queries<NW>(q, qv);
    const uint64_t* const rows = t.words;
    size_t j = 0;
    if constexpr (NW == 4) {
        uint16x8_t limit = vdupq_n_u16(static_cast<uint16_t>(s.thr));
        for (; j + 8 <= t.n; j += 8) {
            const uint16x8_t below = vcltq_u16(neon_d8_wide<NW>(rows + j * NW, qv), limit);
            if (BRCD_LIKELY(vmaxvq_u16(below) == 0)) continue;
            scalar_select_range<PopPortable, NW, Layout::rows>(t, NW, q, j, j + 8, s);
            limit = vdupq_n_u16(static_cast<uint16_t>(s.thr));
        }
    } else {
        // Thresholds stay at most 129 here, so they fit a byte.
        uint8x8_t limit = vdup_n_u8(static_cast<uint8_t>(s.thr));
        for (; j + 8 <= t.n; j += 8) {
            const uint8x8_t d = NW == 1 ? neon_d8_64(rows + j, qv[0]) : vmovn_u16(neon_d8_wide<NW>(rows + j * NW, qv));
            if (BRCD_LIKELY(vget_lane_u64(vreinterpret_u64_u8(vclt_u8(d, limit)), 0) == 0)) continue;
            scalar_select_range<PopPortable, NW, Layout::rows>(t, NW, q, j, j + 8, s);
            limit = vdup_n_u8(static_cast<uint8_t>(s.thr));
        }
    }
    scalar_select_range<PopPortable, NW, Layout::rows>(t, NW, q, j, t.n, s);
}

template <size_t NW>
BRCD_INLINE void neon_rows_distances_one(const Tile& t, const uint64_t* q, int32_t* out) {
    uint8x16_t qv[2];
    neon_queries<NW>(q, qv);
    size_t j = 0;
    for (; j + 8 <= t.n; j += 8) {
        const uint16x8_t d = NW == 1 ? vmovl_u8(neon_d8_64(t.words + j, qv[0])) : neon_d8_wide<NW>(t.words + j * NW, qv);
        vst1q_s32(out + j, vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(d))));
        vst1q_s32(out + j + 4, vreinterpretq_s32_u32(vmovl_u16(vget_high_u16(d))));
    }
    for (; j < t.n; ++j) out[j] = static_cast<int32_t>(neon_row_distance(t.words + j * NW, q, NW));
}

template <size_t NW>
BRCD_INLINE void neon_select(const Tile& t, size_t nw, const uint64_t* q, size_t nq, Selector* sels) {
    for (size_t i = 0; i < nq; ++i) {
        const uint64_t* qi = q + i * words<NW>(nw);
        if constexpr (NW == 1 || NW == 2 || NW == 4) {
            neon_rows_select_one<NW>(t, qi, sels[i]);
        } else {
            Selector& s = sels[i];
            uint32_t thr = s.thr;
            for (size_t j = 0; j < t.n; ++j) {
                const uint32_t d = neon_row_distance(t.words + j * t.stride, qi, nw);
                if (BRCD_UNLIKELY(d < thr)) thr = s.push(d, t.base + j);
            }
        }
    }
}

template <size_t NW>
BRCD_INLINE void neon_distances(const Tile& t, size_t nw, const uint64_t* q, size_t nq, int32_t* out,
                                size_t out_stride) {
    for (size_t i = 0; i < nq; ++i) {
        const uint64_t* qi = q + i * words<NW>(nw);
        int32_t* o = out + i * out_stride;
        if constexpr (NW == 1 || NW == 2 || NW == 4) {
            neon_rows_distances_one<NW>(t, qi, o);
        } else {
            for (size_t j = 0; j < t.n; ++j) o[j] = static_cast<int32_t>(neon_row_distance(t.words + j * t.stride, qi, nw));
        }
    }
}

#define BRCD_SEL_NEON(NW) neon_select<NW>(t, nw, q, nq, s)
#define BRCD_DIST_NEON(NW) neon_distances<NW>(t, nw, q, nq, o, os)
BRCD_DEFINE_SCAN(neon, , rows_layout, BRCD_SEL_NEON, BRCD_DIST_NEON)


#endif  // BRCD_NEON

#if BRCD_SVE

// ---------------------------------------------------------------------------
// SVE: rows in place, one code per 64-bit lane, as many lanes as the CPU has
// ---------------------------------------------------------------------------

#pragma GCC push_options
#pragma GCC target("+sve")
}  // namespace brcd
#include <arm_sve.h>
namespace brcd {

// Distances of the codes j, j + 1, ... in the lanes of pg (q: the query's words,
// broadcast here; SVE vectors have no size, so they cannot sit in an array).
// Two- and four-word codes come apart word by word through the structure
// loads (LD2D, LD4D).
template <size_t NW>
BRCD_INLINE svuint64_t sve_distances_at(const uint64_t* rows, size_t j, svbool_t pg, const uint64_t* q) {
    if constexpr (NW == 1) {
        return svcnt_u64_x(pg, sveor_n_u64_x(pg, svld1_u64(pg, rows + j), q[0]));
    } else if constexpr (NW == 2) {
        const svuint64x2_t c = svld2_u64(pg, rows + 2 * j);
        return svadd_u64_x(pg, svcnt_u64_x(pg, sveor_n_u64_x(pg, svget2_u64(c, 0), q[0])),
                           svcnt_u64_x(pg, sveor_n_u64_x(pg, svget2_u64(c, 1), q[1])));
    } else {
        static_assert(NW == 4, "fixed widths only");
        const svuint64x4_t c = svld4_u64(pg, rows + 4 * j);
        const svuint64_t d01 = svadd_u64_x(pg, svcnt_u64_x(pg, sveor_n_u64_x(pg, svget4_u64(c, 0), q[0])),
                                           svcnt_u64_x(pg, sveor_n_u64_x(pg, svget4_u64(c, 1), q[1])));
        const svuint64_t d23 = svadd_u64_x(pg, svcnt_u64_x(pg, sveor_n_u64_x(pg, svget4_u64(c, 2), q[2])),
                                           svcnt_u64_x(pg, sveor_n_u64_x(pg, svget4_u64(c, 3), q[3])));
        return svadd_u64_x(pg, d01, d23);
    }
}

// Any width: a code's words a vector at a time, summed across lanes.
BRCD_INLINE uint32_t sve_row_distance(const uint64_t* row, const uint64_t* q, size_t nw) {
    svuint64_t acc = svdup_u64(0);
    for (size_t w = 0; w < nw; w += svcntd()) {
        const svbool_t pg = svwhilelt_b64(static_cast<uint64_t>(w), static_cast<uint64_t>(nw));
        acc = svadd_u64_m(pg, acc, svcnt_u64_x(pg, sveor_u64_x(pg, svld1_u64(pg, row + w), svld1_u64(pg, q + w))));
    }
    return static_cast<uint32_t>(svaddv_u64(svptrue_b64(), acc));
}

// Two vectors of codes per step; the last step's predicates cover the tail.
template <size_t NW>
BRCD_INLINE void sve_rows_select_one(const Tile& t, const uint64_t* q, Selector& s) {
    uint64_t qv[NW];  // a local copy: pushes write memory, and the broadcasts stay out of the loop
    for (size_t w = 0; w < NW; ++w) qv[w] = q[w];
    const size_t n = t.n, lanes = svcntd();
    svuint64_t limit = svdup_u64(s.thr);
    for (size_t j = 0; j < n; j += 2 * lanes) {
        const svbool_t p0 = svwhilelt_b64(static_cast<uint64_t>(j), static_cast<uint64_t>(n));
        const svbool_t p1 = svwhilelt_b64(static_cast<uint64_t>(j + lanes), static_cast<uint64_t>(n));
        const svbool_t b0 = svcmplt_u64(p0, sve_distances_at<NW>(t.words, j, p0, qv), limit);
        const svbool_t b1 = svcmplt_u64(p1, sve_distances_at<NW>(t.words, j + lanes, p1, qv), limit);
        if (BRCD_LIKELY(!svptest_any(svptrue_b64(), svorr_b_z(svptrue_b64(), b0, b1)))) continue;
        // (no std::min here: a template first instantiated in this region would be compiled for SVE)
        scalar_select_range<PopPortable, NW, Layout::rows>(t, NW, qv, j, j + 2 * lanes < n ? j + 2 * lanes : n, s);
        limit = svdup_u64(s.thr);
    }
}

template <size_t NW>
BRCD_INLINE void sve_rows_distances_one(const Tile& t, const uint64_t* q, int32_t* out) {
    for (size_t j = 0; j < t.n; j += svcntd()) {
        const svbool_t pg = svwhilelt_b64(static_cast<uint64_t>(j), static_cast<uint64_t>(t.n));
        svst1w_s64(pg, out + j, svreinterpret_s64_u64(sve_distances_at<NW>(t.words, j, pg, q)));
    }
}

template <size_t NW>
BRCD_INLINE void sve_select(const Tile& t, size_t nw, const uint64_t* q, size_t nq, Selector* sels) {
    for (size_t i = 0; i < nq; ++i) {
        const uint64_t* qi = q + i * words<NW>(nw);
        if constexpr (NW == 1 || NW == 2 || NW == 4) {
            sve_rows_select_one<NW>(t, qi, sels[i]);
        } else {
            Selector& s = sels[i];
            uint32_t thr = s.thr;
            for (size_t j = 0; j < t.n; ++j) {
                const uint32_t d = sve_row_distance(t.words + j * t.stride, qi, nw);
                if (BRCD_UNLIKELY(d < thr)) thr = s.push(d, t.base + j);
            }
        }
    }
}

template <size_t NW>
BRCD_INLINE void sve_distances(const Tile& t, size_t nw, const uint64_t* q, size_t nq, int32_t* out,
                               size_t out_stride) {
    for (size_t i = 0; i < nq; ++i) {
        const uint64_t* qi = q + i * words<NW>(nw);
        int32_t* o = out + i * out_stride;
        if constexpr (NW == 1 || NW == 2 || NW == 4) {
            sve_rows_distances_one<NW>(t, qi, o);
        } else {
            for (size_t j = 0; j < t.n; ++j) o[j] = static_cast<int32_t>(sve_row_distance(t.words + j * t.stride, qi, nw));
        }
    }
}

#define BRCD_SEL_SVE(NW) sve_select<NW>(t, nw, q, nq, s)
#define BRCD_DIST_SVE(NW) sve_distances<NW>(t, nw, q, nq, o, os)
BRCD_DEFINE_SCAN(sve, , rows_layout, BRCD_SEL_SVE, BRCD_DIST_SVE)


#pragma GCC pop_options

#endif  // BRCD_SVE

// Every variant compiled into this build, fastest first (the order of kSimdLevels).
inline const std::vector<const ScanVariant*>& scan_variants() {
    static const std::vector<const ScanVariant*> v = {
#if BRCD_SIMD_VARIANTS
        &kScan_avx512, &kScan_avx2, &kScan_popcnt,
#endif
#if BRCD_SVE
        &kScan_sve,
#endif
#if BRCD_NEON
        &kScan_neon,
#endif
        &kScan_scalar,
    };
    return v;
}

// The variant of a level: every level of this architecture has one.
inline const ScanVariant& scan_variant(Simd level) {
    for (const ScanVariant* v : scan_variants())
        if (v->level == level) return *v;
    return kScan_scalar;
}

// ---------------------------------------------------------------------------
// A database range through one variant, tile by tile
// ---------------------------------------------------------------------------

// Codes [p0, p1) of `db` (nb bytes, nw words each), cut into tiles of `tile`
// codes, through the selectors of a block of nq queries (words q, nw per query).
inline void select_range(const ScanVariant& v, const uint8_t* db, size_t nb, size_t nw, size_t p0, size_t p1,
                         size_t tile, const uint64_t* q, size_t nq, Selector* sels, std::vector<uint64_t>& scratch) {
    const Layout layout = v.layout(nw, nq);
    for (size_t j0 = p0; j0 < p1; j0 += tile)
        v.select(make_tile(db, nb, nw, layout, j0, std::min(p1, j0 + tile), scratch), nw, q, nq, sels);
}

// The same range's distances: query i's distance to code j at out[i * out_stride + j - p0].
inline void distances_range(const ScanVariant& v, const uint8_t* db, size_t nb, size_t nw, size_t p0, size_t p1,
                            size_t tile, const uint64_t* q, size_t nq, int32_t* out, size_t out_stride,
                            std::vector<uint64_t>& scratch) {
    const Layout layout = v.layout(nw, nq);
    for (size_t j0 = p0; j0 < p1; j0 += tile)
        v.distances(make_tile(db, nb, nw, layout, j0, std::min(p1, j0 + tile), scratch), nw, q, nq,
                    out + (j0 - p0), out_stride);
}

}  // namespace brcd
