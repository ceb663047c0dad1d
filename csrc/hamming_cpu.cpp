// Native CPU Hamming kernels for brcd (Python module brcd_cli._hamming_cpu).
//
// Packed codes are uint8 rows of nb bytes (bit i of a code is bit i%8 of byte
// i/8). Rows are read as 64-bit words through memcpy, so any alignment is fine,
// and a row's last nb%8 bytes are folded into one extra partial word. Byte
// order inside a word does not matter: only popcounts of xor/and of words that
// were loaded the same way are ever used.
//
// The binary must run on baseline x86-64, so every kernel is built twice: once
// inside functions carrying __attribute__((target("popcnt"))) (the POPCNT
// instruction) and once for the baseline (a branch-free bit-twiddling count).
// The choice is made at run time from __builtin_cpu_supports("popcnt"). All the
// per-query code is always_inline templates, so each variant is compiled with
// its own target options. Non-x86 builds have a single portable variant.
//
// Each operation is written as "process queries [q0, q1)" with its own scratch
// buffers; the Python-facing functions call it once on the whole range with the
// GIL released. Splitting that range across threads later needs no change to
// the kernels themselves.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

// Bumped whenever the Python-visible API changes, so that a stale build left
// over from an older checkout is reported instead of half-working.
static constexpr int kApiVersion = 1;

#if defined(__x86_64__) || defined(_M_X64)
#define BRCD_X86_64 1
#else
#define BRCD_X86_64 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define BRCD_INLINE inline __attribute__((always_inline))
#else
#define BRCD_INLINE inline
#endif

#if BRCD_X86_64 && (defined(__GNUC__) || defined(__clang__))
#define BRCD_POPCNT_VARIANT 1
#define BRCD_TARGET_POPCNT __attribute__((target("popcnt")))
#else
#define BRCD_POPCNT_VARIANT 0
#endif

namespace {

// ---------------------------------------------------------------------------
// Popcount policies
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

#if BRCD_POPCNT_VARIANT
// Only ever inlined into functions compiled with target("popcnt").
struct PopHardware {
    static BRCD_INLINE uint32_t count(uint64_t x) { return static_cast<uint32_t>(__builtin_popcountll(x)); }
};
#endif

BRCD_INLINE uint64_t load_word(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

// The last nb % 8 bytes of a row as one word (missing bytes are zero).
BRCD_INLINE uint64_t load_tail(const uint8_t* p, size_t n_bytes) {
    uint64_t v = 0;
    for (size_t b = 0; b < n_bytes; ++b) v |= static_cast<uint64_t>(p[b]) << (8 * b);
    return v;
}

// ---------------------------------------------------------------------------
// Distance functors: built once per query, then applied to every database row.
// ---------------------------------------------------------------------------

// Codes of exactly NW whole words (64, 128, 256, 512 bits): the query lives in
// registers and the word loop is unrolled.
template <class Pop, size_t NW>
struct FixedDistance {
    uint64_t qw[NW];
    FixedDistance(const uint8_t* q, size_t /*nb*/) {
        for (size_t w = 0; w < NW; ++w) qw[w] = load_word(q + 8 * w);
    }
    BRCD_INLINE uint32_t operator()(const uint8_t* row) const {
        uint32_t d = 0;
        for (size_t w = 0; w < NW; ++w) d += Pop::count(qw[w] ^ load_word(row + 8 * w));
        return d;
    }
};

// Any byte width: whole words, then the tail word.
template <class Pop>
struct GenericDistance {
    const uint8_t* q;
    size_t n_words, tail;
    uint64_t q_tail;
    GenericDistance(const uint8_t* q_, size_t nb) : q(q_), n_words(nb / 8), tail(nb % 8) {
        q_tail = load_tail(q + 8 * n_words, tail);
    }
    BRCD_INLINE uint32_t operator()(const uint8_t* row) const {
        uint32_t d = 0;
        for (size_t w = 0; w < n_words; ++w) d += Pop::count(load_word(q + 8 * w) ^ load_word(row + 8 * w));
        if (tail) d += Pop::count(q_tail ^ load_tail(row + 8 * n_words, tail));
        return d;
    }
};

// Number of mismatching bits inside a mask: popcount((q ^ row) & mask).
template <class Pop, size_t NW>
struct FixedMaskedCount {
    uint64_t qw[NW], mw[NW];
    FixedMaskedCount(const uint8_t* q, const uint8_t* m, size_t /*nb*/) {
        for (size_t w = 0; w < NW; ++w) {
            qw[w] = load_word(q + 8 * w);
            mw[w] = load_word(m + 8 * w);
        }
    }
    BRCD_INLINE uint32_t operator()(const uint8_t* row) const {
        uint32_t d = 0;
        for (size_t w = 0; w < NW; ++w) d += Pop::count((qw[w] ^ load_word(row + 8 * w)) & mw[w]);
        return d;
    }
};

template <class Pop>
struct GenericMaskedCount {
    const uint8_t *q, *m;
    size_t n_words, tail;
    uint64_t q_tail, m_tail;
    GenericMaskedCount(const uint8_t* q_, const uint8_t* m_, size_t nb)
        : q(q_), m(m_), n_words(nb / 8), tail(nb % 8) {
        q_tail = load_tail(q + 8 * n_words, tail);
        m_tail = load_tail(m + 8 * n_words, tail);
    }
    BRCD_INLINE uint32_t operator()(const uint8_t* row) const {
        uint32_t d = 0;
        for (size_t w = 0; w < n_words; ++w)
            d += Pop::count((load_word(q + 8 * w) ^ load_word(row + 8 * w)) & load_word(m + 8 * w));
        if (tail) d += Pop::count((q_tail ^ load_tail(row + 8 * n_words, tail)) & m_tail);
        return d;
    }
};

// Calls BODY(Functor) with the functor type specialised for the byte width.
#define BRCD_WIDTH_SWITCH(NB, FIXED, GENERIC, BODY) \
    switch (NB) {                                   \
        case 8: BODY(FIXED<1>); break;              \
        case 16: BODY(FIXED<2>); break;             \
        case 32: BODY(FIXED<4>); break;             \
        case 64: BODY(FIXED<8>); break;             \
        default: BODY(GENERIC); break;              \
    }

// ---------------------------------------------------------------------------
// Jobs and per-query kernels
// ---------------------------------------------------------------------------

struct Packed {
    const uint8_t* data;
    size_t n;   // rows
    size_t nb;  // bytes per row
    const uint8_t* row(size_t i) const { return data + i * nb; }
};

// Reusable per-worker buffers (one set per thread once the loops are threaded).
struct Scratch {
    std::vector<uint32_t> dist;  // n database distances of the current query
    std::vector<uint64_t> hist;  // histograms over distances 0..L
};

struct RadiusResult {
    std::vector<int64_t> counts;  // hits per query of the range
    std::vector<int32_t> dist;
    std::vector<int64_t> ids;
};

constexpr size_t kHistCopies = 4;  // independent histograms break store-to-load chains on repeated bins

template <class Dist>
BRCD_INLINE void distance_row(const uint8_t* q, const Packed& db, int32_t* out) {
    const size_t n = db.n, nb = db.nb;
    const Dist dist(q, nb);
    const uint8_t* row = db.data;
    for (size_t j = 0; j < n; ++j, row += nb) out[j] = static_cast<int32_t>(dist(row));
}

// k nearest by counting selection: histogram the distances, find the distance t
// at which the running count reaches k, then place hits in one pass in index
// order, so ties come out by index and no sort is needed. Requires 1 <= k <= n.
// True when some value of block[0..kScanBlock) is <= t. Branch-free so that the
// compiler can vectorise it: for values < 2^31, d - (t + 1) has its top bit set
// exactly when d <= t.
constexpr size_t kScanBlock = 16;
BRCD_INLINE bool block_has_le(const uint32_t* block, uint32_t t) {
    uint32_t any = 0;
    for (size_t b = 0; b < kScanBlock; ++b) any |= block[b] - (t + 1);
    return (any >> 31) != 0;
}

template <class Dist>
BRCD_INLINE void knn_query(const uint8_t* q, const Packed& db, size_t k, Scratch& s, int32_t* out_d, int64_t* out_i) {
    // Locals, not db.n / db.nb: the histogram stores could alias them and force reloads.
    const size_t n = db.n, nb = db.nb;
    const size_t bins = 8 * nb + 1;
    uint32_t* const dist_buf = s.dist.data();
    uint64_t* const h = s.hist.data();
    std::fill(h, h + kHistCopies * bins, uint64_t{0});
    const Dist dist(q, nb);
    const uint8_t* row = db.data;
    size_t j = 0;
    for (; j + kHistCopies <= n; j += kHistCopies, row += kHistCopies * nb) {
        const uint32_t d0 = dist(row), d1 = dist(row + nb), d2 = dist(row + 2 * nb), d3 = dist(row + 3 * nb);
        dist_buf[j] = d0;
        dist_buf[j + 1] = d1;
        dist_buf[j + 2] = d2;
        dist_buf[j + 3] = d3;
        ++h[d0];
        ++h[bins + d1];
        ++h[2 * bins + d2];
        ++h[3 * bins + d3];
    }
    for (; j < n; ++j, row += nb) {
        const uint32_t d = dist(row);
        dist_buf[j] = d;
        ++h[d];
    }
    for (size_t v = 0; v < bins; ++v) h[v] += h[bins + v] + h[2 * bins + v] + h[3 * bins + v];

    size_t below = 0, t = 0;
    while (below + h[t] < k) below += h[t++];
    size_t start = 0;
    for (size_t v = 0; v <= t; ++v) {
        const size_t c = h[v];
        h[v] = start;
        start += c;
    }
    const uint32_t tt = static_cast<uint32_t>(t);
    size_t placed = 0;
    for (size_t j0 = 0; j0 < n && placed < k; j0 += kScanBlock) {
        const size_t j1 = std::min(n, j0 + kScanBlock);
        if (j1 - j0 == kScanBlock && !block_has_le(dist_buf + j0, tt)) continue;
        for (j = j0; j < j1; ++j) {
            const uint32_t d = dist_buf[j];
            if (d <= tt) {
                const size_t p = h[d];
                if (p < k) {  // only ever false inside the distance-t group, once it is full
                    out_d[p] = static_cast<int32_t>(d);
                    out_i[p] = static_cast<int64_t>(j);
                    h[d] = p + 1;
                    if (++placed == k) break;
                }
            }
        }
    }
}

// All hits with distance <= r (r <= L), appended in (distance, index) order.
template <class Dist>
BRCD_INLINE void radius_query(const uint8_t* q, const Packed& db, uint32_t r, Scratch& s, RadiusResult& res) {
    const size_t n = db.n, nb = db.nb;
    uint32_t* const dist_buf = s.dist.data();
    uint64_t* const h = s.hist.data();
    std::fill(h, h + r + 1, uint64_t{0});
    const Dist dist(q, nb);
    const uint8_t* row = db.data;
    for (size_t j = 0; j < n; ++j, row += nb) {
        const uint32_t d = dist(row);
        dist_buf[j] = d;
        if (d <= r) ++h[d];
    }
    const size_t base = res.dist.size();
    size_t start = base;
    for (size_t v = 0; v <= r; ++v) {
        const size_t c = h[v];
        h[v] = start;
        start += c;
    }
    res.counts.push_back(static_cast<int64_t>(start - base));
    if (start == base) return;
    res.dist.resize(start);
    res.ids.resize(start);
    int32_t* const od = res.dist.data();
    int64_t* const oi = res.ids.data();
    for (size_t j0 = 0; j0 < n; j0 += kScanBlock) {
        const size_t j1 = std::min(n, j0 + kScanBlock);
        if (j1 - j0 == kScanBlock && !block_has_le(dist_buf + j0, r)) continue;
        for (size_t j = j0; j < j1; ++j) {
            const uint32_t d = dist_buf[j];
            if (d <= r) {
                const size_t p = h[d]++;
                od[p] = static_cast<int32_t>(d);
                oi[p] = static_cast<int64_t>(j);
            }
        }
    }
}

template <class Count>
BRCD_INLINE void masked_row(const uint8_t* q, const uint8_t* m, uint32_t w, const Packed& db, float* out) {
    if (w == 0) {
        std::fill(out, out + db.n, 0.0f);
        return;
    }
    const size_t n = db.n, nb = db.nb;
    const Count count(q, m, nb);
    const float fw = static_cast<float>(w);
    const uint8_t* row = db.data;
    for (size_t j = 0; j < n; ++j, row += nb) {
        const int64_t x = count(row);
        // Exact integers divided once in float: correctly rounded, same as the reference.
        out[j] = static_cast<float>(static_cast<int64_t>(w) - 2 * x) / fw;
    }
}

// ---------------------------------------------------------------------------
// Range kernels, one set per popcount policy
// ---------------------------------------------------------------------------

template <class Pop>
struct Kernels {
    template <size_t NW>
    using FD = FixedDistance<Pop, NW>;
    using GD = GenericDistance<Pop>;
    template <size_t NW>
    using FM = FixedMaskedCount<Pop, NW>;
    using GM = GenericMaskedCount<Pop>;

    static BRCD_INLINE void hamming(const Packed& qs, const Packed& db, int32_t* out, size_t q0, size_t q1) {
#define BRCD_BODY(D) \
    for (size_t i = q0; i < q1; ++i) distance_row<D>(qs.row(i), db, out + i * db.n)
        BRCD_WIDTH_SWITCH(db.nb, FD, GD, BRCD_BODY)
#undef BRCD_BODY
    }

    static BRCD_INLINE void knn(const Packed& qs, const Packed& db, size_t k, Scratch& s, int32_t* out_d,
                                int64_t* out_i, size_t q0, size_t q1) {
#define BRCD_BODY(D) \
    for (size_t i = q0; i < q1; ++i) knn_query<D>(qs.row(i), db, k, s, out_d + i * k, out_i + i * k)
        BRCD_WIDTH_SWITCH(db.nb, FD, GD, BRCD_BODY)
#undef BRCD_BODY
    }

    static BRCD_INLINE void radius(const Packed& qs, const Packed& db, uint32_t r, Scratch& s, RadiusResult& res,
                                   size_t q0, size_t q1) {
#define BRCD_BODY(D) \
    for (size_t i = q0; i < q1; ++i) radius_query<D>(qs.row(i), db, r, s, res)
        BRCD_WIDTH_SWITCH(db.nb, FD, GD, BRCD_BODY)
#undef BRCD_BODY
    }

    static BRCD_INLINE void masked(const Packed& qs, const Packed& db, const Packed& masks, const uint32_t* weights,
                                   float* out, size_t q0, size_t q1) {
        const bool shared = masks.n == 1;
#define BRCD_BODY(C)                                                          \
    for (size_t i = q0; i < q1; ++i) {                                        \
        const size_t mi = shared ? 0 : i;                                     \
        masked_row<C>(qs.row(i), masks.row(mi), weights[mi], db, out + i * db.n); \
    }
        BRCD_WIDTH_SWITCH(db.nb, FM, GM, BRCD_BODY)
#undef BRCD_BODY
    }

    static BRCD_INLINE void popcounts(const Packed& rows, uint32_t* out) {
        for (size_t i = 0; i < rows.n; ++i) {
            const uint8_t* p = rows.row(i);
            uint32_t c = 0;
            size_t w = 0;
            for (; w + 8 <= rows.nb; w += 8) c += Pop::count(load_word(p + w));
            c += Pop::count(load_tail(p + w, rows.nb - w));
            out[i] = c;
        }
    }
};

using HammingFn = void (*)(const Packed&, const Packed&, int32_t*, size_t, size_t);
using KnnFn = void (*)(const Packed&, const Packed&, size_t, Scratch&, int32_t*, int64_t*, size_t, size_t);
using RadiusFn = void (*)(const Packed&, const Packed&, uint32_t, Scratch&, RadiusResult&, size_t, size_t);
using MaskedFn = void (*)(const Packed&, const Packed&, const Packed&, const uint32_t*, float*, size_t, size_t);
using PopcountsFn = void (*)(const Packed&, uint32_t*);

struct OpTable {
    const char* name;
    HammingFn hamming;
    KnnFn knn;
    RadiusFn radius;
    MaskedFn masked;
    PopcountsFn popcounts;
};

// Non-inline entry points: the target attribute on these decides which
// instructions the inlined kernels may use.
#define BRCD_DEFINE_VARIANT(SUFFIX, ATTR, POP)                                                                        \
    ATTR void hamming_##SUFFIX(const Packed& a, const Packed& b, int32_t* o, size_t q0, size_t q1) {                  \
        Kernels<POP>::hamming(a, b, o, q0, q1);                                                                       \
    }                                                                                                                 \
    ATTR void knn_##SUFFIX(const Packed& a, const Packed& b, size_t k, Scratch& s, int32_t* od, int64_t* oi,          \
                           size_t q0, size_t q1) {                                                                    \
        Kernels<POP>::knn(a, b, k, s, od, oi, q0, q1);                                                                \
    }                                                                                                                 \
    ATTR void radius_##SUFFIX(const Packed& a, const Packed& b, uint32_t r, Scratch& s, RadiusResult& res, size_t q0, \
                              size_t q1) {                                                                            \
        Kernels<POP>::radius(a, b, r, s, res, q0, q1);                                                                \
    }                                                                                                                 \
    ATTR void masked_##SUFFIX(const Packed& a, const Packed& b, const Packed& m, const uint32_t* w, float* o,         \
                              size_t q0, size_t q1) {                                                                 \
        Kernels<POP>::masked(a, b, m, w, o, q0, q1);                                                                  \
    }                                                                                                                 \
    ATTR void popcounts_##SUFFIX(const Packed& a, uint32_t* o) { Kernels<POP>::popcounts(a, o); }                     \
    const OpTable kOps_##SUFFIX = {#SUFFIX,          hamming_##SUFFIX, knn_##SUFFIX,                                 \
                                   radius_##SUFFIX, masked_##SUFFIX,  popcounts_##SUFFIX};

#define BRCD_NO_ATTR
BRCD_DEFINE_VARIANT(portable, BRCD_NO_ATTR, PopPortable)
#if BRCD_POPCNT_VARIANT
BRCD_DEFINE_VARIANT(popcnt, BRCD_TARGET_POPCNT, PopHardware)
#endif

bool cpu_has_popcnt() {
#if BRCD_POPCNT_VARIANT
    __builtin_cpu_init();
    return __builtin_cpu_supports("popcnt") != 0;
#else
    return false;
#endif
}

const OpTable* best_ops() {
#if BRCD_POPCNT_VARIANT
    if (cpu_has_popcnt()) return &kOps_popcnt;
#endif
    return &kOps_portable;
}

std::atomic<const OpTable*> g_ops{nullptr};

const OpTable& ops() {
    const OpTable* t = g_ops.load(std::memory_order_acquire);
    if (t == nullptr) {
        t = best_ops();
        g_ops.store(t, std::memory_order_release);
    }
    return *t;
}

// ---------------------------------------------------------------------------
// Python boundary
// ---------------------------------------------------------------------------

using CArray = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

// Checks dtype and rank; returns the array itself when it is C-contiguous
// (zero-copy) and a contiguous copy otherwise.
CArray require_packed(const py::array& a, const char* name, bool allow_1d = false) {
    const py::dtype dt = a.dtype();
    if (dt.kind() != 'u' || dt.itemsize() != 1) {
        throw py::value_error(std::string(name) + " must hold packed codes of dtype uint8, got dtype " +
                              std::string(py::str(dt)));
    }
    if (a.ndim() != 2 && !(allow_1d && a.ndim() == 1)) {
        throw py::value_error(std::string(name) + " must be a 2-D array (n_codes, n_bytes), got " +
                              std::to_string(a.ndim()) + " dimensions");
    }
    return CArray::ensure(a);
}

Packed view_of(const CArray& a) {
    if (a.ndim() == 1) return Packed{a.data(), 1, static_cast<size_t>(a.shape(0))};
    return Packed{a.data(), static_cast<size_t>(a.shape(0)), static_cast<size_t>(a.shape(1))};
}

void check_same_width(const Packed& q, const Packed& db) {
    if (q.nb != db.nb) {
        throw py::value_error("queries have " + std::to_string(q.nb) + " bytes per code but the database has " +
                              std::to_string(db.nb) + "; both must use the same code length");
    }
    if (q.nb == 0) throw py::value_error("codes have 0 bytes; packed codes need at least 8 bits");
}

// Hands a vector's buffer to numpy without copying; the capsule frees it.
template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
    auto* owned = new std::vector<T>(std::move(v));
    py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    return py::array_t<T>({static_cast<py::ssize_t>(owned->size())}, {static_cast<py::ssize_t>(sizeof(T))},
                          owned->data(), owner);
}

py::array_t<int32_t> py_hamming_distances(const py::array& queries, const py::array& database) {
    const CArray qa = require_packed(queries, "queries"), da = require_packed(database, "database");
    const Packed q = view_of(qa), db = view_of(da);
    check_same_width(q, db);
    py::array_t<int32_t> out({static_cast<py::ssize_t>(q.n), static_cast<py::ssize_t>(db.n)});
    int32_t* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        ops().hamming(q, db, o, 0, q.n);
    }
    return out;
}

py::tuple py_knn(const py::array& queries, const py::array& database, int64_t k) {
    const CArray qa = require_packed(queries, "queries"), da = require_packed(database, "database");
    const Packed q = view_of(qa), db = view_of(da);
    check_same_width(q, db);
    if (k <= 0) throw py::value_error("k must be a positive integer, got " + std::to_string(k));
    const size_t kk = std::min(static_cast<size_t>(k), db.n);
    py::array_t<int32_t> out_d({static_cast<py::ssize_t>(q.n), static_cast<py::ssize_t>(kk)});
    py::array_t<int64_t> out_i({static_cast<py::ssize_t>(q.n), static_cast<py::ssize_t>(kk)});
    int32_t* od = out_d.mutable_data();
    int64_t* oi = out_i.mutable_data();
    if (kk > 0 && q.n > 0) {
        py::gil_scoped_release nogil;
        Scratch s;
        s.dist.resize(db.n);
        s.hist.resize(kHistCopies * (8 * db.nb + 1));
        ops().knn(q, db, kk, s, od, oi, 0, q.n);
    }
    return py::make_tuple(out_d, out_i);
}

py::tuple py_radius_search(const py::array& queries, const py::array& database, int64_t radius) {
    const CArray qa = require_packed(queries, "queries"), da = require_packed(database, "database");
    const Packed q = view_of(qa), db = view_of(da);
    check_same_width(q, db);
    if (radius < 0) throw py::value_error("radius must be non-negative, got " + std::to_string(radius));
    const uint32_t r = static_cast<uint32_t>(std::min<uint64_t>(static_cast<uint64_t>(radius), 8 * db.nb));
    RadiusResult res;
    {
        py::gil_scoped_release nogil;
        res.counts.reserve(q.n);
        if (db.n > 0) {
            Scratch s;
            s.dist.resize(db.n);
            s.hist.resize(static_cast<size_t>(r) + 1);
            ops().radius(q, db, r, s, res, 0, q.n);
        } else {
            res.counts.assign(q.n, 0);
        }
    }
    py::array_t<int64_t> lims(static_cast<py::ssize_t>(q.n + 1));
    int64_t* l = lims.mutable_data();
    l[0] = 0;
    for (size_t i = 0; i < q.n; ++i) l[i + 1] = l[i] + res.counts[i];
    return py::make_tuple(lims, to_numpy(std::move(res.dist)), to_numpy(std::move(res.ids)));
}

py::array_t<float> py_masked_similarity_packed(const py::array& queries, const py::array& database,
                                               const py::array& masks) {
    const CArray qa = require_packed(queries, "queries"), da = require_packed(database, "database");
    const CArray ma = require_packed(masks, "masks", /*allow_1d=*/true);
    const Packed q = view_of(qa), db = view_of(da), m = view_of(ma);
    check_same_width(q, db);
    if (m.nb != q.nb) {
        throw py::value_error("masks have " + std::to_string(m.nb) + " bytes per row but the codes have " +
                              std::to_string(q.nb));
    }
    if (m.n != 1 && m.n != q.n) {
        throw py::value_error("masks must hold one row shared by all queries or one row per query (" +
                              std::to_string(q.n) + "), got " + std::to_string(m.n) + " rows");
    }
    py::array_t<float> out({static_cast<py::ssize_t>(q.n), static_cast<py::ssize_t>(db.n)});
    float* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        std::vector<uint32_t> weights(m.n);
        const OpTable& t = ops();
        t.popcounts(m, weights.data());
        t.masked(q, db, m, weights.data(), o, 0, q.n);
    }
    return out;
}

py::dict py_cpu_features() {
    py::dict d;
#if BRCD_X86_64
    d["arch"] = "x86_64";
#elif defined(__aarch64__) || defined(_M_ARM64)
    d["arch"] = "aarch64";
#else
    d["arch"] = "other";
#endif
    d["cpu_popcnt"] = cpu_has_popcnt();
    d["popcnt_variant_compiled"] = static_cast<bool>(BRCD_POPCNT_VARIANT);
    d["popcount_path"] = ops().name;
    d["threads"] = 1;
    d["api_version"] = kApiVersion;
    return d;
}

// Test hook: run the baseline path on a CPU that has POPCNT (or go back to "auto").
std::string py_set_popcount_path(const std::string& name) {
    const std::string previous = ops().name;
    if (name == "auto") {
        g_ops.store(best_ops());
    } else if (name == "portable") {
        g_ops.store(&kOps_portable);
    } else if (name == "popcnt") {
#if BRCD_POPCNT_VARIANT
        if (!cpu_has_popcnt()) throw py::value_error("this CPU has no POPCNT instruction");
        g_ops.store(&kOps_popcnt);
#else
        throw py::value_error("the popcnt variant is not compiled on this platform");
#endif
    } else {
        throw py::value_error("unknown popcount path '" + name + "'; use auto, popcnt or portable");
    }
    return previous;
}

}  // namespace

PYBIND11_MODULE(_hamming_cpu, m) {
    m.doc() = "Native CPU Hamming kernels for packed binary codes (brcd).";
    m.attr("API_VERSION") = kApiVersion;
    m.def("hamming_distances", &py_hamming_distances, py::arg("queries"), py::arg("database"),
          "All-pairs Hamming distances, int32 (q, n).");
    m.def("knn", &py_knn, py::arg("queries"), py::arg("database"), py::arg("k"),
          "k nearest codes per query as (distances int32 (q, k'), indices int64 (q, k')), ties by index.");
    m.def("radius_search", &py_radius_search, py::arg("queries"), py::arg("database"), py::arg("radius"),
          "All codes within distance <= radius as CSR (lims int64, distances int32, indices int64).");
    m.def("masked_similarity_packed", &py_masked_similarity_packed, py::arg("queries"), py::arg("database"),
          py::arg("masks"), "Masked cosine similarity of packed codes, float32 (q, n).");
    m.def("cpu_features", &py_cpu_features, "Which popcount path the kernels use on this CPU.");
    m.def("_set_popcount_path", &py_set_popcount_path, py::arg("name"),
          "Testing hook: force 'popcnt', 'portable' or 'auto'; returns the previous path.");
}
