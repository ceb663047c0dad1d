// Native CPU Hamming kernels for brcd (Python module brcd_cli._hamming_cpu).
//
// Packed codes are uint8 rows of nb bytes (bit i of a code is bit i%8 of byte
// i/8). Rows are read as 64-bit words (a row's last nb%8 bytes are folded into
// one zero-padded word), so any width that is a multiple of 8 bits works and
// any alignment is fine. Byte order inside a word does not matter: only
// popcounts of xor/and of words loaded the same way are ever used.
//
// Structure of a search (k-NN, range, all-pairs distances):
//   * the database is cut into contiguous parts (one per thread when there are
//     too few queries to keep every thread busy) and each part into tiles of
//     about 256 KiB that stay in L2 while a block of queries scans them;
//   * a tile is scanned, a block of queries at a time, by one of the
//     instruction-set variants of hamming_scan.h, chosen at run time from the
//     CPU's features (override with the environment variable
//     BRCD_SIMD=avx512|avx2|popcnt|sve|neon|scalar, read by cpu_features.h, which
//     the hash-table lookup shares); the variant says whether it reads the
//     rows in place or a word-major copy of the tile;
//   * k-NN and range search stream (distance, index) pairs into an exact
//     Selector (hamming_select.h): a threshold over integer distances rejects
//     almost every code with one compare, and ties go to the smaller index;
//   * parts of the same query are merged exactly at the end.
// Threads are plain std::threads started per call (the calling thread works
// too), so they never touch torch's or numba's OpenMP pools; the GIL is
// released while they run, and numpy inputs are read in place.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "choice_error_py.h"

#include <atomic>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "hamming_scan.h"

namespace py = pybind11;

// Bumped whenever the Python-visible API changes, so that a stale build left
// over from an older checkout is reported instead of half-working.
static constexpr int kApiVersion = 3;

namespace {

using brcd::load_tail;
using brcd::load_word;
using brcd::Selector;
using brcd::Tile;

struct Packed {
    const uint8_t* data;
    size_t n;   // rows
    size_t nb;  // bytes per row
    const uint8_t* row(size_t i) const { return data + i * nb; }
};

// ---------------------------------------------------------------------------
// Masked similarity of packed codes (a dense output of q x n floats, so it is
// bound by writing the output; a scalar loop per variant is enough)
// ---------------------------------------------------------------------------

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


template <class Count>
BRCD_INLINE void masked_rows(const Packed& qs, const Packed& db, const Packed& masks, const uint32_t* weights,
                             float* out, size_t q0, size_t q1) {
    const bool shared = masks.n == 1;
    for (size_t i = q0; i < q1; ++i) {
        const size_t mi = shared ? 0 : i;
        masked_row<Count>(qs.row(i), masks.row(mi), weights[mi], db, out + i * db.n);
    }
}

template <class Pop>
BRCD_INLINE void masked_range(const Packed& qs, const Packed& db, const Packed& masks, const uint32_t* weights,
                              float* out, size_t q0, size_t q1) {
    switch (db.nb) {
        case 8: masked_rows<FixedMaskedCount<Pop, 1>>(qs, db, masks, weights, out, q0, q1); break;
        case 16: masked_rows<FixedMaskedCount<Pop, 2>>(qs, db, masks, weights, out, q0, q1); break;
        case 32: masked_rows<FixedMaskedCount<Pop, 4>>(qs, db, masks, weights, out, q0, q1); break;
        case 64: masked_rows<FixedMaskedCount<Pop, 8>>(qs, db, masks, weights, out, q0, q1); break;
        default: masked_rows<GenericMaskedCount<Pop>>(qs, db, masks, weights, out, q0, q1); break;
    }
}

template <class Pop>
BRCD_INLINE void popcount_rows(const Packed& rows, uint32_t* out) {
    for (size_t i = 0; i < rows.n; ++i) {
        const uint8_t* p = rows.row(i);
        uint32_t c = 0;
        size_t w = 0;
        for (; w + 8 <= rows.nb; w += 8) c += Pop::count(load_word(p + w));
        c += Pop::count(load_tail(p + w, rows.nb - w));
        out[i] = c;
    }
}

// ---------------------------------------------------------------------------
// Variants of the masked similarity, one per instruction set (the scans are
// hamming_scan.h's ScanVariant table)
// ---------------------------------------------------------------------------

using MaskedFn = void (*)(const Packed&, const Packed&, const Packed&, const uint32_t*, float*, size_t, size_t);
using PopcountsFn = void (*)(const Packed&, uint32_t*);

struct MaskedOps {
    brcd::Simd level;
    MaskedFn masked;
    PopcountsFn popcounts;
};

// Non-inline entry points: the target attribute on these decides which
// instructions the inlined kernels may use.
#define BRCD_DEFINE_MASKED(SUFFIX, ATTR, POP)                                                                  \
    ATTR void masked_##SUFFIX(const Packed& a, const Packed& b, const Packed& m, const uint32_t* w, float* o, \
                              size_t q0, size_t q1) {                                                          \
        masked_range<POP>(a, b, m, w, o, q0, q1);                                                              \
    }                                                                                                          \
    ATTR void popcounts_##SUFFIX(const Packed& a, uint32_t* o) { popcount_rows<POP>(a, o); }                   \
    const MaskedOps kMasked_##SUFFIX = {brcd::Simd::SUFFIX, masked_##SUFFIX, popcounts_##SUFFIX};

BRCD_DEFINE_MASKED(scalar, , brcd::PopPortable)
#if BRCD_SIMD_VARIANTS
BRCD_DEFINE_MASKED(popcnt, BRCD_TARGET_POPCNT, brcd::PopHardware)
BRCD_DEFINE_MASKED(avx2, BRCD_TARGET_AVX2, brcd::PopHardware)
BRCD_DEFINE_MASKED(avx512, BRCD_TARGET_AVX512, brcd::PopHardware)
#endif
#if BRCD_NEON
BRCD_DEFINE_MASKED(neon, , brcd::PopPortable)  // the compiler's popcount is one CNT + ADDV here
#endif
#if BRCD_SVE
BRCD_DEFINE_MASKED(sve, , brcd::PopPortable)  // bound by the float output, as on x86
#endif

const MaskedOps* const kMaskedOps[] = {
#if BRCD_SIMD_VARIANTS
    &kMasked_avx512, &kMasked_avx2, &kMasked_popcnt,
#endif
#if BRCD_SVE
    &kMasked_sve,
#endif
#if BRCD_NEON
    &kMasked_neon,
#endif
    &kMasked_scalar,
};

const MaskedOps& masked_ops(brcd::Simd level) {
    for (const MaskedOps* m : kMaskedOps)
        if (m->level == level) return *m;
    return kMasked_scalar;
}

// Set by the testing hook (a level, or -1); otherwise BRCD_SIMD decides on
// every call, so a user can switch paths without restarting the process.
std::atomic<int> g_forced{-1};

// Every scan entry point asks for its level here, so this is also where the
// AVX2 kernel's step shape is read from BRCD_AVX2_STEP (a bad value is the
// same one-line error as a bad BRCD_SIMD).
brcd::Simd chosen_level() {
    brcd::avx2_step_slot().store(static_cast<int>(brcd::avx2_step_from_env()), std::memory_order_relaxed);
    const int forced = g_forced.load(std::memory_order_acquire);
    if (forced >= 0) return static_cast<brcd::Simd>(forced);
    return brcd::simd_from_env();
}

// ---------------------------------------------------------------------------
// Threads and work plans
// ---------------------------------------------------------------------------

size_t default_threads() {
    const unsigned n = std::thread::hardware_concurrency();
    return n ? n : 1;
}

// Runs f(item, worker) for item in [0, n_items) on up to `threads` workers
// (the caller is worker 0) and rethrows the first exception of any worker.
template <class F>
void parallel_for(size_t n_items, size_t threads, F&& f) {
    const size_t n_workers = std::max<size_t>(1, std::min(threads, n_items));
    std::atomic<size_t> next{0};
    std::exception_ptr error;
    std::mutex error_lock;
    auto work = [&](size_t worker) {
        try {
            for (size_t item; (item = next.fetch_add(1)) < n_items;) f(item, worker);
        } catch (...) {
            std::lock_guard<std::mutex> g(error_lock);
            if (!error) error = std::current_exception();
            next.store(n_items);
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(n_workers - 1);
    for (size_t w = 1; w < n_workers; ++w) pool.emplace_back(work, w);
    work(0);
    for (auto& th : pool) th.join();
    if (error) std::rethrow_exception(error);
}

// How a (queries x database) job is cut: database parts x blocks of queries.
struct Plan {
    size_t parts, qblock, n_qblocks, part_len, tile;
    size_t items() const { return parts * n_qblocks; }
};

constexpr size_t kTileBytes = 256 * 1024;  // a database tile that stays in L2 while a block of queries scans it
constexpr size_t kMaxQueryBlock = 64;

Plan make_plan(size_t nq, size_t ndb, size_t nw, size_t threads) {
    Plan p{};
    p.tile = std::max<size_t>(1024, (kTileBytes / (8 * nw)) / 32 * 32);
    // Split the database when there are too few queries for every thread to
    // have several blocks and the database is big enough to be worth it.
    p.parts = (threads > 1 && nq < 2 * threads && ndb >= 4096 * threads) ? threads : 1;
    p.part_len = p.parts > 1 ? (ndb + p.parts - 1) / p.parts : ndb;
    const size_t per_thread = (nq + 4 * threads - 1) / (4 * threads);
    p.qblock = std::max<size_t>(1, std::min(kMaxQueryBlock, per_thread));
    p.n_qblocks = nq ? (nq + p.qblock - 1) / p.qblock : 0;
    return p;
}

// Queries as whole 64-bit words, tail bytes zero-padded.
std::vector<uint64_t> query_words(const Packed& q, size_t nw) { return brcd::rows_as_words(q.data, q.n, q.nb, nw); }

struct Worker {
    std::vector<Selector> sel;
    std::vector<uint64_t> scratch;
};

// Streams database part `part` through the selectors of query block `block`;
// reset(s) prepares a selector, done(query, part, sorted keys) takes the result.
template <class Reset, class Done>
void select_item(const brcd::ScanVariant& t, const Packed& q, const Packed& db, size_t nw,
                 const std::vector<uint64_t>& qw, const Plan& plan, size_t item, Worker& wk, size_t limit,
                 Reset&& reset, Done&& done) {
    const size_t block = item / plan.parts, part = item % plan.parts;
    const size_t i0 = block * plan.qblock, i1 = std::min(q.n, i0 + plan.qblock);
    const size_t p0 = std::min(db.n, part * plan.part_len), p1 = std::min(db.n, p0 + plan.part_len);
    if (wk.sel.size() < i1 - i0) wk.sel.resize(i1 - i0);
    for (size_t i = i0; i < i1; ++i) reset(wk.sel[i - i0]);
    brcd::select_range(t, db.data, db.nb, nw, p0, p1, plan.tile, qw.data() + i0 * nw, i1 - i0, wk.sel.data(),
                       wk.scratch);
    std::vector<uint64_t> keys;
    for (size_t i = i0; i < i1; ++i) {
        wk.sel[i - i0].finish(limit, keys);
        done(i, part, keys);
    }
}

size_t words_per_code(const Packed& p) { return (p.nb + 7) / 8; }

void knn_native(const brcd::ScanVariant& t, const Packed& q, const Packed& db, size_t kk, size_t threads, int32_t* od,
                int64_t* oi) {
    const size_t nw = words_per_code(db);
    const uint32_t n_bits = static_cast<uint32_t>(8 * db.nb);
    const std::vector<uint64_t> qw = query_words(q, nw);
    const Plan plan = make_plan(q.n, db.n, nw, threads);
    std::vector<std::vector<uint64_t>> partial(plan.parts > 1 ? q.n * plan.parts : 0);
    auto write = [&](size_t i, const std::vector<uint64_t>& keys) {
        for (size_t r = 0; r < kk; ++r) {
            od[i * kk + r] = static_cast<int32_t>(brcd::key_distance(keys[r]));
            oi[i * kk + r] = static_cast<int64_t>(brcd::key_index(keys[r]));
        }
    };
    std::vector<Worker> workers(std::min(threads, plan.items()) + 1);
    parallel_for(plan.items(), threads, [&](size_t item, size_t w) {
        select_item(
            t, q, db, nw, qw, plan, item, workers[w], kk, [&](Selector& s) { s.reset_knn(kk, n_bits); },
            [&](size_t i, size_t part, std::vector<uint64_t>& keys) {
                if (plan.parts == 1)
                    write(i, keys);
                else
                    partial[i * plan.parts + part].swap(keys);
            });
    });
    if (plan.parts > 1) {
        // Each part holds its own top k; the global top k is among their union.
        std::vector<uint64_t> merged;
        for (size_t i = 0; i < q.n; ++i) {
            merged.clear();
            for (size_t p = 0; p < plan.parts; ++p)
                merged.insert(merged.end(), partial[i * plan.parts + p].begin(), partial[i * plan.parts + p].end());
            std::partial_sort(merged.begin(), merged.begin() + static_cast<std::ptrdiff_t>(kk), merged.end());
            write(i, merged);
        }
    }
}

// Per query, every (distance, index) key with distance <= r, sorted.
std::vector<std::vector<uint64_t>> radius_native(const brcd::ScanVariant& t, const Packed& q, const Packed& db, uint32_t r,
                                                 size_t threads) {
    const size_t nw = words_per_code(db);
    const std::vector<uint64_t> qw = query_words(q, nw);
    const Plan plan = make_plan(q.n, db.n, nw, threads);
    std::vector<std::vector<uint64_t>> partial(q.n * plan.parts);
    std::vector<Worker> workers(std::min(threads, plan.items()) + 1);
    parallel_for(plan.items(), threads, [&](size_t item, size_t w) {
        select_item(
            t, q, db, nw, qw, plan, item, workers[w], SIZE_MAX, [&](Selector& s) { s.reset_range(r); },
            [&](size_t i, size_t part, std::vector<uint64_t>& keys) { partial[i * plan.parts + part].swap(keys); });
    });
    if (plan.parts == 1) return partial;
    std::vector<std::vector<uint64_t>> merged(q.n);
    for (size_t i = 0; i < q.n; ++i) {
        for (size_t p = 0; p < plan.parts; ++p) {
            auto& src = partial[i * plan.parts + p];
            merged[i].insert(merged[i].end(), src.begin(), src.end());
            std::vector<uint64_t>().swap(src);
        }
        std::sort(merged[i].begin(), merged[i].end());
    }
    return merged;
}

void distances_native(const brcd::ScanVariant& t, const Packed& q, const Packed& db, size_t threads,
                      int32_t* out) {
    const size_t nw = words_per_code(db);
    const std::vector<uint64_t> qw = query_words(q, nw);
    const Plan plan = make_plan(q.n, db.n, nw, threads);
    std::vector<Worker> workers(std::min(threads, plan.items()) + 1);
    parallel_for(plan.items(), threads, [&](size_t item, size_t w) {
        const size_t block = item / plan.parts, part = item % plan.parts;
        const size_t i0 = block * plan.qblock, i1 = std::min(q.n, i0 + plan.qblock);
        const size_t p0 = std::min(db.n, part * plan.part_len), p1 = std::min(db.n, p0 + plan.part_len);
        brcd::distances_range(t, db.data, db.nb, nw, p0, p1, plan.tile, qw.data() + i0 * nw, i1 - i0,
                              out + i0 * db.n + p0, db.n, workers[w].scratch);
    });
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

// Distances travel in 16 bits and indices in 48 inside the selector's keys.
constexpr size_t kMaxBytes = 8190;

void check_same_width(const Packed& q, const Packed& db) {
    if (q.nb != db.nb) {
        throw py::value_error("queries have " + std::to_string(q.nb) + " bytes per code but the database has " +
                              std::to_string(db.nb) + "; both must use the same code length");
    }
    if (q.nb == 0) throw py::value_error("codes have 0 bytes; packed codes need at least 8 bits");
    if (q.nb > kMaxBytes) {
        throw py::value_error("codes of " + std::to_string(8 * q.nb) + " bits are longer than the " +
                              std::to_string(8 * kMaxBytes) + " bits these kernels support");
    }
    if (db.n >= (size_t{1} << brcd::kIndexBits)) throw py::value_error("the database has too many codes");
}

size_t thread_count(int64_t threads) {
    if (threads < 0) throw py::value_error("threads must be >= 0 (0: one per CPU core), got " + std::to_string(threads));
    return threads == 0 ? default_threads() : static_cast<size_t>(threads);
}

// Hands a vector's buffer to numpy without copying; the capsule frees it.
template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
    auto* owned = new std::vector<T>(std::move(v));
    py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
    return py::array_t<T>({static_cast<py::ssize_t>(owned->size())}, {static_cast<py::ssize_t>(sizeof(T))},
                          owned->data(), owner);
}

py::array_t<int32_t> py_hamming_distances(const py::array& queries, const py::array& database, int64_t threads) {
    const CArray qa = require_packed(queries, "queries"), da = require_packed(database, "database");
    const Packed q = view_of(qa), db = view_of(da);
    check_same_width(q, db);
    const size_t nt = thread_count(threads);
    const brcd::ScanVariant& t = brcd::scan_variant(chosen_level());
    py::array_t<int32_t> out({static_cast<py::ssize_t>(q.n), static_cast<py::ssize_t>(db.n)});
    int32_t* o = out.mutable_data();
    if (q.n > 0 && db.n > 0) {
        py::gil_scoped_release nogil;
        distances_native(t, q, db, nt, o);
    }
    return out;
}

py::tuple py_knn(const py::array& queries, const py::array& database, int64_t k, int64_t threads) {
    const CArray qa = require_packed(queries, "queries"), da = require_packed(database, "database");
    const Packed q = view_of(qa), db = view_of(da);
    check_same_width(q, db);
    if (k <= 0) throw py::value_error("k must be a positive integer, got " + std::to_string(k));
    const size_t nt = thread_count(threads);
    const brcd::ScanVariant& t = brcd::scan_variant(chosen_level());
    const size_t kk = std::min(static_cast<size_t>(k), db.n);
    py::array_t<int32_t> out_d({static_cast<py::ssize_t>(q.n), static_cast<py::ssize_t>(kk)});
    py::array_t<int64_t> out_i({static_cast<py::ssize_t>(q.n), static_cast<py::ssize_t>(kk)});
    int32_t* od = out_d.mutable_data();
    int64_t* oi = out_i.mutable_data();
    if (kk > 0 && q.n > 0) {
        py::gil_scoped_release nogil;
        knn_native(t, q, db, kk, nt, od, oi);
    }
    return py::make_tuple(out_d, out_i);
}

py::tuple py_radius_search(const py::array& queries, const py::array& database, int64_t radius, int64_t threads) {
    const CArray qa = require_packed(queries, "queries"), da = require_packed(database, "database");
    const Packed q = view_of(qa), db = view_of(da);
    check_same_width(q, db);
    if (radius < 0) throw py::value_error("radius must be non-negative, got " + std::to_string(radius));
    const size_t nt = thread_count(threads);
    const brcd::ScanVariant& t = brcd::scan_variant(chosen_level());
    const uint32_t r = static_cast<uint32_t>(std::min<uint64_t>(static_cast<uint64_t>(radius), 8 * db.nb));
    std::vector<int64_t> lims(q.n + 1, 0);
    std::vector<int32_t> dist;
    std::vector<int64_t> ids;
    {
        py::gil_scoped_release nogil;
        std::vector<std::vector<uint64_t>> hits;
        if (db.n > 0 && q.n > 0) hits = radius_native(t, q, db, r, nt);
        for (size_t i = 0; i < hits.size(); ++i) lims[i + 1] = lims[i] + static_cast<int64_t>(hits[i].size());
        dist.resize(static_cast<size_t>(lims[q.n]));
        ids.resize(dist.size());
        for (size_t i = 0; i < hits.size(); ++i) {
            size_t p = static_cast<size_t>(lims[i]);
            for (uint64_t key : hits[i]) {
                dist[p] = static_cast<int32_t>(brcd::key_distance(key));
                ids[p++] = static_cast<int64_t>(brcd::key_index(key));
            }
        }
    }
    return py::make_tuple(to_numpy(std::move(lims)), to_numpy(std::move(dist)), to_numpy(std::move(ids)));
}

py::array_t<float> py_masked_similarity_packed(const py::array& queries, const py::array& database,
                                               const py::array& masks, int64_t threads) {
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
    const size_t nt = thread_count(threads);
    const MaskedOps& t = masked_ops(chosen_level());
    py::array_t<float> out({static_cast<py::ssize_t>(q.n), static_cast<py::ssize_t>(db.n)});
    float* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        std::vector<uint32_t> weights(m.n);
        t.popcounts(m, weights.data());
        const size_t block = std::max<size_t>(1, std::min<size_t>(64, (q.n + 4 * nt - 1) / (4 * nt)));
        const size_t n_blocks = (q.n + block - 1) / block;
        parallel_for(n_blocks, nt, [&](size_t b, size_t) {
            t.masked(q, db, m, weights.data(), o, b * block, std::min(q.n, (b + 1) * block));
        });
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
    d["cpu_popcnt"] = brcd::cpu().popcnt;
    d["cpu_avx2"] = brcd::cpu().avx2;
    d["cpu_avx512_vpopcntdq"] = brcd::cpu().avx512;
    d["cpu_neon"] = brcd::cpu().neon;
    d["cpu_sve"] = brcd::cpu().sve;
    py::list compiled, usable;
    for (const brcd::ScanVariant* v : brcd::scan_variants()) {
        compiled.append(brcd::simd_name(v->level));
        if (brcd::cpu_supports(v->level)) usable.append(brcd::simd_name(v->level));
    }
    d["simd_paths_compiled"] = compiled;
    d["simd_paths_supported"] = usable;
    d["simd_path"] = brcd::simd_report([] { return std::string(brcd::simd_name(chosen_level())); });
    d["simd_env"] = brcd::kSimdEnv;
    d["avx2_step"] = brcd::simd_report([] { return std::string(brcd::avx2_step_name(brcd::avx2_step_from_env())); });
    d["avx2_step_env"] = brcd::kAvx2StepEnv;
    d["default_threads"] = default_threads();
    d["api_version"] = kApiVersion;
    return d;
}

// Test hook: force one variant ("auto" returns to the environment/CPU choice).
std::string py_set_simd_path(const std::string& name) {
    const std::string previous = brcd::simd_name(chosen_level());
    g_forced.store(name == "auto" ? -1 : static_cast<int>(brcd::parse_simd(name, "_set_simd_path")));
    return previous;
}

}  // namespace

PYBIND11_MODULE(_hamming_cpu, m) {
    m.doc() = "Native CPU Hamming kernels for packed binary codes (brcd).";
    m.attr("API_VERSION") = kApiVersion;
    brcd::register_choice_error(m);
    m.def("hamming_distances", &py_hamming_distances, py::arg("queries"), py::arg("database"), py::arg("threads") = 0,
          "All-pairs Hamming distances, int32 (q, n).");
    m.def("knn", &py_knn, py::arg("queries"), py::arg("database"), py::arg("k"), py::arg("threads") = 0,
          "k nearest codes per query as (distances int32 (q, k'), indices int64 (q, k')), ties by index.");
    m.def("radius_search", &py_radius_search, py::arg("queries"), py::arg("database"), py::arg("radius"),
          py::arg("threads") = 0,
          "All codes within distance <= radius as CSR (lims int64, distances int32, indices int64).");
    m.def("masked_similarity_packed", &py_masked_similarity_packed, py::arg("queries"), py::arg("database"),
          py::arg("masks"), py::arg("threads") = 0, "Masked cosine similarity of packed codes, float32 (q, n).");
    m.def("cpu_features", &py_cpu_features, "CPU features, compiled SIMD paths and the one in use.");
    m.def("_set_simd_path", &py_set_simd_path, py::arg("name"),
          "Testing hook: force a SIMD path of this architecture (avx512, avx2, popcnt, sve, neon, scalar) or 'auto'; "
          "returns the previous path.");
}
