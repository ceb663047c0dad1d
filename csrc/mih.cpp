// Exact multi-index hashing (MIH) over packed binary codes, for brcd
// (Python module brcd_cli._mih_cpu).
//
// The L-bit code is cut into m contiguous substrings; table j maps the value
// of substring j (its "key", at most 32 bits) to the ids of the codes that
// carry it, as CSR: offsets[key] .. offsets[key + 1] index into ids, and ids
// inside a bucket are increasing. A table is either direct-address (offsets
// has 2^w + 1 entries) or sorted (keys holds the distinct keys, ascending,
// offsets has len(keys) + 1 entries and a lookup is a binary search).
// Each table also keeps a copy of the codes in its own bucket order, so the
// candidates of a bucket are checked by reading memory sequentially instead
// of jumping around the codes array once per candidate (at a million codes
// the jumps, not the popcounts, would dominate a k-NN search).
//
// Radius search (Norouzi, Punjani & Fleet): write r = m * r' + a with
// 0 <= a < m. If d(q, x) <= r then some substring j < a + 1 has d_j <= r', or
// some later one has d_j <= r' - 1 (otherwise the distance would be at least
// (a + 1)(r' + 1) + (m - a - 1) r' = r + 1). So table j is probed with every
// key at substring distance <= r_j (r' or r' - 1), each candidate's full
// distance is checked, and the survivors are sorted by (distance, index).
//
// Deduplication keeps no per-query state: a code is found in table j exactly
// when d_j <= r_j (at level s = d_j), and it is reported only by the table
// that minimises (d_i, i). That table always probes it when d(q, x) <= r: the
// minimising table has d_i no larger than any covering table's, and radii
// only fall by one from the first a + 1 tables to the rest, so a tie with a
// later-radius table is broken towards the earlier, wider one.
//
// k-NN grows the search one (level, table) step at a time in the order
// (0, 0), (0, 1), ..., (0, m-1), (1, 0), ...: a code is first reached at the
// step (d_i, i) of its minimising table, which is again the table that
// reports it. After step (s, j) every code with
//   d <= sum_i (probed_i + 1) - 1,  probed_i = s for i <= j, s - 1 for i > j,
// has been found; the search stops once k found codes lie within that
// guaranteed radius, and returns the k smallest by (distance, index).
//
// The bucket scan (the candidate check: xor, popcount of the code and of each
// substring) is compiled three times through the target attributes of
// cpu_features.h: portable, with the popcnt instruction, and for AVX-512
// VPOPCNTDQ (64-bit codes, 32 per step as vector popcounts compared into a bit
// mask of hits). The best one the CPU has runs; BRCD_SIMD=scalar|popcnt|avx2|avx512
// chooses, read and checked by cpu_features.h exactly as for the scan kernels
// (there is no avx2 build here, so avx2 runs the popcnt one). No -march flag is
// needed, so one build runs on any x86-64 CPU and on other architectures
// (portable only).

#include "choice_error_py.h"
#include "cpu_features.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;

static constexpr int kApiVersion = 2;
static constexpr int kMaxWords = 8;  // codes up to 512 bits

#define BRCD_INLINE inline __attribute__((always_inline))
// Lambdas on the hot path must be inlined into the target-specific entry
// points too: a lambda body compiled on its own would get the default target
// and a library call for every popcount.
#define BRCD_LAMBDA_INLINE __attribute__((always_inline))

namespace {

using U32Array = py::array_t<uint32_t, py::array::c_style>;
using U8Array = py::array_t<uint8_t, py::array::c_style>;

// Where one substring lies in the code, seen as little-endian 64-bit words.
struct Substring {
    uint32_t start = 0;  // first bit
    uint32_t width = 0;  // bits, 1..32
    uint32_t word0 = 0, word1 = 0;
    uint32_t shift = 0;
    uint64_t mask0 = 0, mask1 = 0;  // the substring's bits in word0 and word1 (mask1 == 0: one word)
    uint64_t key_mask = 0;

    Substring(uint32_t s, uint32_t w) : start(s), width(w) {
        word0 = s / 64;
        shift = s % 64;
        key_mask = (w == 64) ? ~0ULL : ((1ULL << w) - 1);
        mask0 = key_mask << shift;
        if (shift + w > 64) {
            word1 = word0 + 1;
            mask1 = key_mask >> (64 - shift);
        } else {
            word1 = word0;
            mask1 = 0;
        }
    }

    BRCD_INLINE uint32_t key(const uint64_t* words) const {
        uint64_t v = words[word0] >> shift;
        if (mask1) v |= words[word1] << (64 - shift);
        return static_cast<uint32_t>(v & key_mask);
    }
};

struct Table {
    Substring sub;
    const uint32_t* keys = nullptr;  // sorted tables only
    const uint32_t* offsets = nullptr;
    const uint32_t* ids = nullptr;
    const uint8_t* codes = nullptr;  // codes[p] is the code of ids[p]
    size_t n_buckets = 0;

    // The [begin, end) range of ids whose substring equals key.
    BRCD_INLINE void bucket(uint32_t key, uint32_t& begin, uint32_t& end) const {
        if (keys == nullptr) {
            begin = offsets[key];
            end = offsets[key + 1];
            return;
        }
        const uint32_t* it = std::lower_bound(keys, keys + n_buckets, key);
        if (it == keys + n_buckets || *it != key) {
            begin = end = 0;
            return;
        }
        size_t b = static_cast<size_t>(it - keys);
        begin = offsets[b];
        end = offsets[b + 1];
    }
};

struct Codes {
    const uint8_t* data = nullptr;
    size_t n = 0;
    size_t nb = 0;  // bytes per code
    size_t nw = 0;  // 64-bit words per code (last one zero-padded)

    BRCD_INLINE void load(size_t i, uint64_t* out) const {
        out[nw - 1] = 0;
        std::memcpy(out, data + i * nb, nb);
    }
};

// Loads of a whole code specialised for the common widths (64, 128, 256 bits),
// so the hot loop reads words directly instead of calling memcpy.
template <int NW>
struct FixedLoad {
    static constexpr size_t kWords = NW;
    static BRCD_INLINE void load(const uint8_t* base, size_t, size_t, size_t i, uint64_t* out) {
        std::memcpy(out, base + i * (8 * NW), 8 * NW);
    }
};
struct AnyLoad {
    static constexpr size_t kWords = 0;  // known only at run time
    static BRCD_INLINE void load(const uint8_t* base, size_t nb, size_t nw, size_t i, uint64_t* out) {
        out[nw - 1] = 0;
        std::memcpy(out, base + i * nb, nb);
    }
};

BRCD_INLINE int popcount64(uint64_t x) { return __builtin_popcountll(x); }

// Visit every w-bit mask with exactly s bits set (Gosper's hack), in increasing order.
template <class F>
BRCD_INLINE void for_each_mask(uint32_t w, uint32_t s, F&& f) {
    if (s == 0) {
        f(uint64_t{0});
        return;
    }
    if (s > w) return;
    const uint64_t limit = (w == 64) ? 0 : (1ULL << w);
    uint64_t v = (s == 64) ? ~0ULL : ((1ULL << s) - 1);
    while (true) {
        f(v);
        uint64_t t = v | (v - 1);
        uint64_t low = ~t & (t + 1);
        if (t + 1 == 0) break;  // v was the highest mask of 64 bits
        uint64_t next = (t + 1) | (((low - 1) >> (__builtin_ctzll(v) + 1)));
        if (limit && next >= limit) break;
        v = next;
    }
}

struct IndexView {
    size_t n = 0, nb = 0, nw = 0;  // codes, bytes and 64-bit words per code
    std::vector<Table> tables;
    uint32_t bits = 0;
};

// C(n, k) for n <= 64 (saturating; only compared with bucket counts).
BRCD_INLINE uint64_t binomial(uint32_t n, uint32_t k) {
    if (k > n) return 0;
    k = std::min(k, n - k);
    unsigned __int128 c = 1;
    for (uint32_t i = 1; i <= k; ++i) {
        c = c * (n - k + i) / i;
        if (c > (static_cast<unsigned __int128>(1) << 63)) return ~0ULL;
    }
    return static_cast<uint64_t>(c);
}

using Range = std::pair<uint32_t, uint32_t>;  // [begin, end) positions of one bucket in its table

// The non-empty buckets at substring distance exactly s from qkey, as ranges
// appended to `ranges`. The keys are listed first and their offsets
// prefetched a few keys ahead (the offsets are small; the buckets' codes are
// what is far away, see scan_ranges).
BRCD_INLINE void collect_ranges(const Table& t, uint32_t qkey, uint32_t s, std::vector<Range>& ranges) {
    constexpr size_t kAheadOffsets = 16;
    thread_local std::vector<uint32_t> keys;
    keys.clear();
    ranges.clear();
    if (binomial(t.sub.width, s) <= t.n_buckets) {
        for_each_mask(t.sub.width, s, [&](uint64_t mask) BRCD_LAMBDA_INLINE { keys.push_back(qkey ^ static_cast<uint32_t>(mask)); });
    } else {
        // More keys at this distance than buckets in the table (a wide substring
        // or a large radius): walk the buckets instead of enumerating the keys.
        for (size_t b = 0; b < t.n_buckets; ++b) {
            const uint32_t key = t.keys ? t.keys[b] : static_cast<uint32_t>(b);
            if (static_cast<uint32_t>(popcount64(key ^ qkey)) == s) keys.push_back(key);
        }
    }
    const size_t n = keys.size();
    const bool direct = t.keys == nullptr;
    if (direct)
        for (size_t i = 0; i < std::min(kAheadOffsets, n); ++i) __builtin_prefetch(t.offsets + keys[i]);
    for (size_t i = 0; i < n; ++i) {
        if (direct && i + kAheadOffsets < n) __builtin_prefetch(t.offsets + keys[i + kAheadOffsets]);
        uint32_t b, e;
        t.bucket(keys[i], b, e);
        if (b < e) ranges.emplace_back(b, e);
    }
}

// Call f(begin, end) for each of nr bucket ranges. A bucket is a random place
// in a table of many megabytes, so each would stall on cache misses; instead
// a prefetch cursor runs ahead over the same ranges, issuing every cache line
// of each upcoming bucket until about kAheadBytes are requested beyond the
// bucket being scanned: the memory system keeps lines in flight whatever the
// bucket sizes, and a bucket costs one short prefetch loop, not one per line.
template <class F>
BRCD_INLINE void scan_ranges(const IndexView& ix, const Table& t, const Range* ranges, size_t nr, F&& f) {
    constexpr size_t kAheadBytes = 4096;
    const uint8_t* base = t.codes;
    const size_t nb = ix.nb;
    size_t pr = 0;                     // the next range the cursor prefetches
    size_t fetched = 0, consumed = 0;  // bytes prefetched / scanned so far
    for (size_t i = 0; i < nr; ++i) {
        const size_t bytes = static_cast<size_t>(ranges[i].second - ranges[i].first) * nb;
        for (; pr < nr && fetched < consumed + bytes + kAheadBytes; ++pr) {
            const uintptr_t lo = reinterpret_cast<uintptr_t>(base + static_cast<size_t>(ranges[pr].first) * nb);
            const uintptr_t hi = reinterpret_cast<uintptr_t>(base + static_cast<size_t>(ranges[pr].second) * nb);
            for (uintptr_t line = lo & ~uintptr_t{63}; line < hi; line += 64)
                __builtin_prefetch(reinterpret_cast<const void*>(line));
            fetched += hi - lo;
        }
        consumed += bytes;
        f(ranges[i].first, ranges[i].second);
    }
}

// Substring distances: is table j the first (by (d_i, i)) to reach this code?
BRCD_INLINE bool reported_by(const IndexView& ix, const uint64_t* x, size_t j, uint32_t dj) {
    const size_t m = ix.tables.size();
    for (size_t i = 0; i < m; ++i) {
        if (i == j) continue;
        const Substring& s = ix.tables[i].sub;
        uint32_t di = static_cast<uint32_t>(popcount64(x[s.word0] & s.mask0) + popcount64(x[s.word1] & s.mask1));
        if (di < dj || (di == dj && i < j)) return false;
    }
    return true;
}

// Distance from the query to the code at position p of table t; x receives their xor.
template <class Load>
BRCD_INLINE uint32_t distance_and_xor(const IndexView& ix, const Table& t, const uint64_t* q, uint32_t p, uint64_t* x) {
    uint64_t c[kMaxWords];
    Load::load(t.codes, ix.nb, ix.nw, p, c);
    const size_t nw = Load::kWords ? Load::kWords : ix.nw;
    uint32_t d = 0;
    for (size_t w = 0; w < nw; ++w) {
        x[w] = q[w] ^ c[w];
        d += static_cast<uint32_t>(popcount64(x[w]));
    }
    return d;
}

// Per-table probe radii for an exact radius-r search (see the file comment).
std::vector<int> probe_radii(uint32_t r, size_t m) {
    std::vector<int> radii(m);
    const int rp = static_cast<int>(r / m);
    const size_t a = r % m;
    for (size_t j = 0; j < m; ++j) radii[j] = (j <= a) ? rp : rp - 1;
    return radii;
}

// Scanning one bucket: call cb(p, d, x) for every position p in [b, e) whose
// code lies within `limit` of the query (d its distance, x its xor with the query).
template <class Load>
struct ScalarScan {
    template <class F>
    static BRCD_INLINE void scan(const IndexView& ix, const Table& t, const uint64_t* q, uint32_t b, uint32_t e,
                                 uint32_t limit, F&& cb) {
        uint64_t x[kMaxWords];
        for (uint32_t p = b; p < e; ++p) {
            const uint32_t d = distance_and_xor<Load>(ix, t, q, p, x);
            if (d <= limit) cb(p, d, static_cast<const uint64_t*>(x));
        }
    }
};

// 64-bit codes, one word each: read in place (no copy to the stack: a
// variable-length copy becomes `rep movs`, whose start-up cost and failed
// store forwarding into the next load dominated the whole search).
struct Scan64 {
    template <class F>
    static BRCD_INLINE void scan(const IndexView&, const Table& t, const uint64_t* q, uint32_t b, uint32_t e,
                                 uint32_t limit, F&& cb) {
        const uint8_t* codes = t.codes;
        const uint64_t q0 = q[0];
        for (uint32_t p = b; p < e; ++p) {
            uint64_t c;
            std::memcpy(&c, codes + static_cast<size_t>(p) * 8, 8);
            const uint64_t x = c ^ q0;
            const uint32_t d = static_cast<uint32_t>(popcount64(x));
            if (d <= limit) cb(p, d, &x);
        }
    }
};

#if BRCD_SIMD_VARIANTS
// The AVX-512 build of Scan64: 32 codes per step as four vector loads,
// popcounts and compares into one bit mask of hits; hits are rare (the limit
// is the current k-th distance or the radius), so they are re-read one by one
// instead of storing every block's distances. The tail takes masked loads.
struct Scan64Avx512 {
    // Bit i set: code i of these 8 (of the lanes given) lies within the limit.
    static BRCD_TARGET_AVX512 BRCD_INLINE uint32_t hits8(const uint64_t* codes, __m512i qv, __m512i lv, __mmask8 lanes) {
        const __m512i c = _mm512_maskz_loadu_epi64(lanes, codes);
        return static_cast<uint32_t>(
            _mm512_mask_cmple_epu64_mask(lanes, _mm512_popcnt_epi64(_mm512_xor_si512(c, qv)), lv));
    }

    template <class F>
    static BRCD_TARGET_AVX512 BRCD_INLINE void visit(const uint64_t* codes, uint64_t q0, uint32_t p, uint32_t hits,
                                                     F& cb) {
        while (hits) {
            const uint32_t i = static_cast<uint32_t>(__builtin_ctz(hits));
            hits &= hits - 1;
            uint64_t x;
            std::memcpy(&x, codes + p + i, 8);
            x ^= q0;
            cb(p + i, static_cast<uint32_t>(popcount64(x)), &x);
        }
    }

    template <class F>
    static BRCD_TARGET_AVX512 void scan(const IndexView&, const Table& t, const uint64_t* q, uint32_t b, uint32_t e,
                                        uint32_t limit, F&& cb) {
        const uint64_t* codes = reinterpret_cast<const uint64_t*>(t.codes);
        const uint64_t q0 = q[0];
        const __m512i qv = _mm512_set1_epi64(static_cast<long long>(q0));
        const __m512i lv = _mm512_set1_epi64(static_cast<long long>(limit));
        uint32_t p = b;
        for (; p + 32 <= e; p += 32) {
            const uint32_t hits = hits8(codes + p, qv, lv, 0xff) | (hits8(codes + p + 8, qv, lv, 0xff) << 8) |
                                  (hits8(codes + p + 16, qv, lv, 0xff) << 16) |
                                  (hits8(codes + p + 24, qv, lv, 0xff) << 24);
            if (hits) visit(codes, q0, p, hits, cb);
        }
        for (; p < e; p += 8) {
            const uint32_t count = std::min<uint32_t>(8, e - p);
            const uint32_t hits = hits8(codes + p, qv, lv, static_cast<__mmask8>((1u << count) - 1));
            if (hits) visit(codes, q0, p, hits, cb);
        }
    }
};
#endif

// ---------------------------------------------------------------------------
// The builds of the bucket scan. A Target runs scan_ranges with the candidate
// check of one Scan, compiled for one instruction set: everything it calls is
// inlined into it, so the hot loop gets that set's popcount and vectors while
// the search logic around it stays portable code.

#define BRCD_DEFINE_TARGET(NAME, ATTR)                                                                       \
    struct NAME {                                                                                            \
        template <class Scan, class F>                                                                       \
        static ATTR void scan(const IndexView& ix, const Table& t, const uint64_t* q, const Range* ranges,   \
                              size_t nr, uint32_t limit, F&& cb) {                                           \
            scan_ranges(ix, t, ranges, nr, [&](uint32_t b, uint32_t e) BRCD_LAMBDA_INLINE {                  \
                Scan::scan(ix, t, q, b, e, limit, cb);                                                       \
            });                                                                                              \
        }                                                                                                    \
    };
BRCD_DEFINE_TARGET(TargetScalar, )
BRCD_DEFINE_TARGET(TargetPopcnt, BRCD_TARGET_POPCNT)
#if BRCD_SIMD_VARIANTS
BRCD_DEFINE_TARGET(TargetAvx512, BRCD_TARGET_AVX512)
#endif

// ---------------------------------------------------------------------------
// One query.

// Radius search: (distance << 32 | id) for every code within r, sorted.
template <class Scan, class Target>
void radius_one(const IndexView& ix, const uint64_t* q, uint32_t r, std::vector<uint64_t>& out) {
    out.clear();
    const size_t m = ix.tables.size();
    if (ix.n == 0 || m == 0) return;
    const std::vector<int> radii = probe_radii(r, m);
    thread_local std::vector<Range> ranges;
    for (size_t j = 0; j < m; ++j) {
        const Table& t = ix.tables[j];
        const uint32_t qkey = t.sub.key(q);
        const int top = std::min<int>(radii[j], static_cast<int>(t.sub.width));
        for (int s = 0; s <= top; ++s) {
            collect_ranges(t, qkey, static_cast<uint32_t>(s), ranges);
            Target::template scan<Scan>(ix, t, q, ranges.data(), ranges.size(), r,
                                        [&](uint32_t p, uint32_t d, const uint64_t* x) BRCD_LAMBDA_INLINE {
                                            if (m > 1 && !reported_by(ix, x, j, static_cast<uint32_t>(s))) return;
                                            out.push_back((static_cast<uint64_t>(d) << 32) | t.ids[p]);
                                        });
        }
    }
    std::sort(out.begin(), out.end());
}

// k-NN by growing the radius: the min(k, n) nearest as (distance << 32 | id), sorted.
template <class Scan, class Target>
void knn_one(const IndexView& ix, const uint64_t* q, size_t k, std::vector<uint64_t>& out) {
    out.clear();
    const size_t m = ix.tables.size();
    const size_t n = ix.n;
    const size_t want = std::min(k, n);
    if (want == 0 || m == 0) return;
    const uint32_t L = ix.bits;
    thread_local std::vector<uint32_t> hist;  // per-thread scratch, reused across queries
    thread_local std::vector<Range> ranges;
    hist.assign(L + 2, 0);
    uint32_t bound = L;  // no kept candidate is farther; all found codes within it are kept
    size_t kept_within_bound = 0;
    uint32_t qkeys[64];
    uint32_t max_width = 0;
    for (size_t j = 0; j < m; ++j) {
        qkeys[j] = ix.tables[j].sub.key(q);
        max_width = std::max(max_width, ix.tables[j].sub.width);
    }
    for (uint32_t s = 0; s <= max_width; ++s) {
        for (size_t j = 0; j < m; ++j) {
            const Table& t = ix.tables[j];
            if (s <= t.sub.width) {
                collect_ranges(t, qkeys[j], s, ranges);
                Target::template scan<Scan>(ix, t, q, ranges.data(), ranges.size(), bound,
                                            [&](uint32_t p, uint32_t d, const uint64_t* x) BRCD_LAMBDA_INLINE {
                                                if (m > 1 && !reported_by(ix, x, j, s)) return;
                                                out.push_back((static_cast<uint64_t>(d) << 32) | t.ids[p]);
                                                hist[d] += 1;
                                                kept_within_bound += 1;
                                            });
            }
            // Tighten the bound: the smallest D with at least `want` kept codes at distance <= D.
            if (kept_within_bound >= want) {
                size_t acc = 0;
                uint32_t D = 0;
                for (; D <= L; ++D) {
                    acc += hist[D];
                    if (acc >= want) break;
                }
                if (D < bound) {
                    bound = D;
                    kept_within_bound = acc;
                }
            }
            // Radius within which every code has been found after step (s, j).
            bool exhausted = false;
            uint64_t guaranteed = 0;
            for (size_t i = 0; i < m; ++i) {
                const uint32_t probed = (i <= j) ? s + 1 : s;  // levels 0..probed-1 done
                if (probed > ix.tables[i].sub.width) exhausted = true;
                guaranteed += probed;
            }
            const uint64_t R = exhausted ? L : guaranteed - 1;  // guaranteed >= 1: table 0 has probed level 0
            if (exhausted || (bound <= R && kept_within_bound >= want)) {
                std::sort(out.begin(), out.end());
                out.resize(std::min(out.size(), want));
                return;
            }
        }
    }
    std::sort(out.begin(), out.end());
    out.resize(std::min(out.size(), want));
}

// ---------------------------------------------------------------------------
// Batch drivers: queries split over threads.

struct Query {
    const uint8_t* data;
    size_t nb, nw;
    BRCD_INLINE void load(size_t i, uint64_t* out) const {
        for (size_t w = 0; w < nw; ++w) out[w] = 0;
        std::memcpy(out, data + i * nb, nb);
    }
};

template <class F>
void parallel_queries(size_t nq, int threads, F&& work) {
    const size_t t = std::max<size_t>(1, std::min<size_t>(static_cast<size_t>(std::max(threads, 1)), nq));
    if (t <= 1) {
        work(0, nq);
        return;
    }
    std::vector<std::thread> pool;
    std::exception_ptr error;
    std::mutex error_lock;
    const size_t chunk = (nq + t - 1) / t;
    auto guarded = [&](size_t lo, size_t hi) {
        try {
            work(lo, hi);
        } catch (...) {
            std::lock_guard<std::mutex> g(error_lock);
            if (!error) error = std::current_exception();
        }
    };
    for (size_t w = 1; w < t; ++w) {
        const size_t lo = w * chunk, hi = std::min(nq, lo + chunk);
        if (lo < hi) pool.emplace_back(guarded, lo, hi);
    }
    guarded(0, std::min(nq, chunk));
    for (auto& th : pool) th.join();
    if (error) std::rethrow_exception(error);
}

using Results = std::vector<std::vector<uint64_t>>;

using brcd::Simd;

// The levels of cpu_features.h this module has a build of the candidate check for, fastest first.
#if BRCD_SIMD_VARIANTS
constexpr std::initializer_list<Simd> kBuilt = {Simd::avx512, Simd::popcnt, Simd::scalar};
#else
constexpr std::initializer_list<Simd> kBuilt = {Simd::scalar};
#endif

// The build of the candidate check to run: the best one at or below the level BRCD_SIMD (or the CPU) chooses.
Simd use_path() { return brcd::cap_to(brcd::simd_from_env(), kBuilt); }

// Call body(Scan{}, Target{}) with the build that `path` and the code width select.
template <class Load, class Body>
void with_build(const IndexView& ix, Simd path, Body&& body) {
#if BRCD_SIMD_VARIANTS
    if (path == Simd::avx512 && ix.nb == 8) return body(Scan64Avx512{}, TargetAvx512{});
#endif
    if (path != Simd::scalar && ix.nb == 8) return body(Scan64{}, TargetPopcnt{});
    if (path != Simd::scalar) return body(ScalarScan<Load>{}, TargetPopcnt{});
    body(ScalarScan<Load>{}, TargetScalar{});
}

// Every query through `search(scan, target, q, out)`, with the build that
// `path` selects, the queries split over threads.
template <class Load, class Search>
void batch(const IndexView& ix, const Query& qs, size_t nq, int threads, Results& res, Simd path, Search&& search) {
    parallel_queries(nq, threads, [&](size_t lo, size_t hi) {
        with_build<Load>(ix, path, [&](auto scan, auto target) {
            uint64_t q[kMaxWords];
            for (size_t i = lo; i < hi; ++i) {
                qs.load(i, q);
                search(scan, target, q, res[i]);
            }
        });
    });
}

template <class Load>
void radius_batch(const IndexView& ix, const Query& qs, size_t nq, uint32_t r, int threads, Results& res, Simd path) {
    batch<Load>(ix, qs, nq, threads, res, path, [&](auto scan, auto target, const uint64_t* q, std::vector<uint64_t>& out) {
        radius_one<decltype(scan), decltype(target)>(ix, q, r, out);
    });
}

template <class Load>
void knn_batch(const IndexView& ix, const Query& qs, size_t nq, size_t k, int threads, Results& res, Simd path) {
    batch<Load>(ix, qs, nq, threads, res, path, [&](auto scan, auto target, const uint64_t* q, std::vector<uint64_t>& out) {
        knn_one<decltype(scan), decltype(target)>(ix, q, k, out);
    });
}

// ---------------------------------------------------------------------------
// Building tables: a counting sort per substring (ids stay increasing in a bucket).

uint32_t key_of(const Codes& c, const Substring& s, size_t i) {
    uint64_t w[kMaxWords];
    c.load(i, w);
    return s.key(w);
}

// The codes in the table's bucket order (ids[p]'s code at row p).
U8Array gather_codes(const Codes& c, const uint32_t* ids) {
    U8Array out({static_cast<py::ssize_t>(c.n), static_cast<py::ssize_t>(c.nb)});
    uint8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        for (size_t p = 0; p < c.n; ++p) std::memcpy(dst + p * c.nb, c.data + static_cast<size_t>(ids[p]) * c.nb, c.nb);
    }
    return out;
}

py::tuple build_table(const Codes& c, const Substring& s, bool direct) {
    const size_t n = c.n;
    U32Array ids(static_cast<py::ssize_t>(n));
    uint32_t* out_ids = ids.mutable_data();
    std::vector<uint32_t> keys(n);
    if (direct) {
        const size_t nbk = size_t{1} << s.width;
        U32Array offsets(static_cast<py::ssize_t>(nbk + 1));
        uint32_t* off = offsets.mutable_data();
        {
            py::gil_scoped_release nogil;
            std::fill(off, off + nbk + 1, 0u);
            for (size_t i = 0; i < n; ++i) {
                keys[i] = key_of(c, s, i);
                off[keys[i] + 1] += 1;
            }
            for (size_t b = 0; b < nbk; ++b) off[b + 1] += off[b];
            std::vector<uint32_t> fill(off, off + nbk);
            for (size_t i = 0; i < n; ++i) out_ids[fill[keys[i]]++] = static_cast<uint32_t>(i);
        }
        return py::make_tuple(py::none(), offsets, ids, gather_codes(c, out_ids));
    }
    std::vector<uint64_t> pairs(n);
    {
        py::gil_scoped_release nogil;
        for (size_t i = 0; i < n; ++i) pairs[i] = (static_cast<uint64_t>(key_of(c, s, i)) << 32) | i;
        std::sort(pairs.begin(), pairs.end());
    }
    size_t distinct = 0;
    for (size_t i = 0; i < n; ++i)
        if (i == 0 || (pairs[i] >> 32) != (pairs[i - 1] >> 32)) ++distinct;
    U32Array ukeys(static_cast<py::ssize_t>(distinct));
    U32Array offsets(static_cast<py::ssize_t>(distinct + 1));
    uint32_t* uk = ukeys.mutable_data();
    uint32_t* off = offsets.mutable_data();
    size_t b = 0;
    for (size_t i = 0; i < n; ++i) {
        const uint32_t key = static_cast<uint32_t>(pairs[i] >> 32);
        if (i == 0 || key != uk[b - 1]) {
            uk[b] = key;
            off[b] = static_cast<uint32_t>(i);
            ++b;
        }
        out_ids[i] = static_cast<uint32_t>(pairs[i] & 0xffffffffu);
    }
    off[distinct] = static_cast<uint32_t>(n);
    return py::make_tuple(ukeys, offsets, ids, gather_codes(c, out_ids));
}

Codes codes_of(const U8Array& a) {
    if (a.ndim() != 2) throw std::invalid_argument("codes must be a 2-D uint8 array (n_codes, n_bytes)");
    Codes c;
    c.data = a.data();
    c.n = static_cast<size_t>(a.shape(0));
    c.nb = static_cast<size_t>(a.shape(1));
    c.nw = (c.nb + 7) / 8;
    if (c.nb == 0 || c.nw > kMaxWords)
        throw std::invalid_argument("codes must have 1 to " + std::to_string(8 * kMaxWords) + " bytes");
    if (c.n > 0xffffffffULL) throw std::invalid_argument("an index holds at most 2^32 - 1 codes");
    return c;
}

void check_layout(const std::vector<std::pair<uint32_t, uint32_t>>& layout, size_t bits) {
    if (layout.empty() || layout.size() > 64) throw std::invalid_argument("need 1 to 64 substrings");
    uint32_t next = 0;
    for (const auto& p : layout) {
        if (p.first != next || p.second < 1 || p.second > 32)
            throw std::invalid_argument("substrings must tile the code contiguously, 1 to 32 bits each");
        next += p.second;
    }
    if (next != bits) throw std::invalid_argument("substrings must cover every bit of the code");
}

py::list build_tables(const U8Array& codes, const std::vector<std::pair<uint32_t, uint32_t>>& layout,
                      const std::vector<bool>& direct) {
    Codes c = codes_of(codes);
    check_layout(layout, 8 * c.nb);
    if (direct.size() != layout.size()) throw std::invalid_argument("one direct flag per substring");
    py::list out;
    for (size_t j = 0; j < layout.size(); ++j) {
        if (direct[j] && layout[j].second > 30)
            throw std::invalid_argument("direct-address tables are limited to 30-bit substrings");
        out.append(build_table(c, Substring(layout[j].first, layout[j].second), direct[j]));
    }
    return out;
}

// ---------------------------------------------------------------------------
// The index object: holds the arrays (numpy, possibly memory-mapped) and searches them.

class MultiIndex {
   public:
    MultiIndex(uint32_t bits, const std::vector<std::pair<uint32_t, uint32_t>>& layout, py::list tables) {
        if (bits == 0 || bits % 8 || bits > 64 * kMaxWords)
            throw std::invalid_argument("bits must be a positive multiple of 8, at most " + std::to_string(64 * kMaxWords));
        view_.bits = bits;
        view_.nb = bits / 8;
        view_.nw = (view_.nb + 7) / 8;
        check_layout(layout, view_.bits);
        if (tables.size() != layout.size()) throw std::invalid_argument("one table per substring");
        for (size_t j = 0; j < layout.size(); ++j) {
            py::tuple t = tables[j].cast<py::tuple>();
            if (t.size() != 4) throw std::invalid_argument("a table is (keys or None, offsets, ids, codes)");
            Table tab{Substring(layout[j].first, layout[j].second)};
            const bool direct = t[0].is_none();
            if (!direct) {
                const U32Array keys = t[0].cast<U32Array>();  // a handle: copies share the numpy buffer
                keep_.push_back(keys);
                tab.keys = keys.data();
                tab.n_buckets = static_cast<size_t>(keys.size());
                for (size_t b = 1; b < tab.n_buckets; ++b)
                    if (tab.keys[b] <= tab.keys[b - 1]) throw std::invalid_argument(bad(j, "keys are not increasing"));
                if (tab.n_buckets > 0 && tab.sub.width < 32 && tab.keys[tab.n_buckets - 1] >> tab.sub.width)
                    throw std::invalid_argument(bad(j, "a key is wider than its substring"));
            } else {
                if (tab.sub.width > 30) throw std::invalid_argument(bad(j, "a direct table is wider than 30 bits"));
                tab.n_buckets = size_t{1} << tab.sub.width;
            }
            const U32Array offsets = t[1].cast<U32Array>();
            const U32Array ids = t[2].cast<U32Array>();
            const U8Array codes = t[3].cast<U8Array>();
            keep_.push_back(offsets);
            keep_.push_back(ids);
            keep_codes_.push_back(codes);
            if (j == 0) view_.n = static_cast<size_t>(ids.size());
            if (view_.n > 0xffffffffULL) throw std::invalid_argument("an index holds at most 2^32 - 1 codes");
            if (static_cast<size_t>(offsets.size()) != tab.n_buckets + 1)
                throw std::invalid_argument(bad(j, "offsets have the wrong length"));
            if (static_cast<size_t>(ids.size()) != view_.n)
                throw std::invalid_argument(bad(j, "ids do not list every code once"));
            if (codes.ndim() != 2 || static_cast<size_t>(codes.shape(0)) != view_.n ||
                static_cast<size_t>(codes.shape(1)) != view_.nb)
                throw std::invalid_argument(bad(j, "its codes do not have one row per id"));
            tab.offsets = offsets.data();
            tab.ids = ids.data();
            tab.codes = codes.data();
            validate(j, tab);
            view_.tables.push_back(tab);
        }
    }

    size_t size() const { return view_.n; }

    py::tuple radius_search(const U8Array& queries, int64_t radius, int threads) {
        const Query q = queries_of(queries);
        const size_t nq = static_cast<size_t>(queries.shape(0));
        if (radius < 0) throw std::invalid_argument("radius must be >= 0");
        const uint32_t r = static_cast<uint32_t>(std::min<int64_t>(radius, view_.bits));
        std::vector<std::vector<uint64_t>> res(nq);
        {
            py::gil_scoped_release nogil;
            run_radius(q, nq, r, threads, res);
        }
        size_t total = 0;
        for (const auto& v : res) total += v.size();
        py::array_t<int64_t> lims(static_cast<py::ssize_t>(nq + 1));
        py::array_t<int32_t> dist(static_cast<py::ssize_t>(total));
        py::array_t<int64_t> idx(static_cast<py::ssize_t>(total));
        int64_t* l = lims.mutable_data();
        int32_t* d = dist.mutable_data();
        int64_t* ix = idx.mutable_data();
        size_t pos = 0;
        l[0] = 0;
        for (size_t i = 0; i < nq; ++i) {
            for (uint64_t v : res[i]) {
                d[pos] = static_cast<int32_t>(v >> 32);
                ix[pos] = static_cast<int64_t>(v & 0xffffffffu);
                ++pos;
            }
            l[i + 1] = static_cast<int64_t>(pos);
        }
        return py::make_tuple(lims, dist, idx);
    }

    py::tuple knn(const U8Array& queries, int64_t k, int threads) {
        const Query q = queries_of(queries);
        const size_t nq = static_cast<size_t>(queries.shape(0));
        if (k < 1) throw std::invalid_argument("k must be a positive integer");
        const size_t kk = std::min<size_t>(static_cast<size_t>(k), view_.n);
        std::vector<std::vector<uint64_t>> res(nq);
        {
            py::gil_scoped_release nogil;
            run_knn(q, nq, kk, threads, res);
        }
        py::array_t<int32_t> dist({static_cast<py::ssize_t>(nq), static_cast<py::ssize_t>(kk)});
        py::array_t<int64_t> idx({static_cast<py::ssize_t>(nq), static_cast<py::ssize_t>(kk)});
        int32_t* d = dist.mutable_data();
        int64_t* ix = idx.mutable_data();
        for (size_t i = 0; i < nq; ++i) {
            if (res[i].size() != kk) throw std::runtime_error("internal error: k-NN found too few codes");
            for (size_t c = 0; c < kk; ++c) {
                d[i * kk + c] = static_cast<int32_t>(res[i][c] >> 32);
                ix[i * kk + c] = static_cast<int64_t>(res[i][c] & 0xffffffffu);
            }
        }
        return py::make_tuple(dist, idx);
    }

   private:
    std::vector<U8Array> keep_codes_;
    std::vector<U32Array> keep_;  // keeps the (memory-mapped) arrays alive while the view points into them
    IndexView view_;

    static std::string bad(size_t j, const char* what) {
        return "table " + std::to_string(j) + " is corrupt: " + what;
    }

    // Everything a search dereferences is checked once here, so a damaged index
    // file fails to open instead of reading out of bounds later.
    void validate(size_t j, const Table& t) const {
        const size_t n = view_.n;
        if (t.offsets[0] != 0 || t.offsets[t.n_buckets] != n)
            throw std::invalid_argument(bad(j, "offsets do not span the ids"));
        for (size_t b = 0; b < t.n_buckets; ++b)
            if (t.offsets[b + 1] < t.offsets[b]) throw std::invalid_argument(bad(j, "offsets decrease"));
        for (size_t i = 0; i < n; ++i)
            if (t.ids[i] >= n) throw std::invalid_argument(bad(j, "an id is out of range"));
    }

    Query queries_of(const U8Array& queries) const {
        if (queries.ndim() != 2 || static_cast<size_t>(queries.shape(1)) != view_.nb)
            throw std::invalid_argument("queries must be a 2-D uint8 array with " + std::to_string(view_.nb) +
                                        " bytes per code, like the index");
        return Query{queries.data(), view_.nb, view_.nw};
    }

    // Calls run(load, path) with the code loader for this index's width (a constant word count for 64-, 128-
    // and 256-bit codes) and the build BRCD_SIMD chooses, read once per call.
    template <class Run>
    void with_loader(Run&& run) const {
        const Simd path = use_path();
        switch (view_.nb) {
            case 8: return run(FixedLoad<1>{}, path);
            case 16: return run(FixedLoad<2>{}, path);
            case 32: return run(FixedLoad<4>{}, path);
            default: return run(AnyLoad{}, path);
        }
    }

    void run_radius(const Query& q, size_t nq, uint32_t r, int threads, Results& res) const {
        with_loader([&](auto load, Simd path) {
            radius_batch<decltype(load)>(view_, q, nq, r, threads, res, path);
        });
    }

    void run_knn(const Query& q, size_t nq, size_t k, int threads, Results& res) const {
        with_loader([&](auto load, Simd path) { knn_batch<decltype(load)>(view_, q, nq, k, threads, res, path); });
    }
};

}  // namespace

PYBIND11_MODULE(_mih_cpu, mod) {
    mod.doc() = "Exact multi-index hashing over packed binary codes (brcd's hash-table lookup).";
    mod.attr("API_VERSION") = kApiVersion;
    brcd::register_choice_error(mod);
    mod.def("build_tables", &build_tables, py::arg("codes"), py::arg("layout"), py::arg("direct"),
            "One (keys or None, offsets, ids, codes in bucket order) CSR table per (start, width) substring.");
    mod.def("cpu_features", []() {
        py::dict d;
        d["cpu_popcnt"] = brcd::cpu().popcnt;
        d["cpu_avx2"] = brcd::cpu().avx2;
        d["cpu_avx512_vpopcntdq"] = brcd::cpu().avx512;
        py::list built, usable;
        for (Simd s : kBuilt) {
            built.append(brcd::simd_name(s));
            if (brcd::cpu_supports(s)) usable.append(brcd::simd_name(s));
        }
        d["paths_compiled"] = built;
        d["paths_supported"] = usable;
        d["path"] = brcd::simd_report([] { return std::string(brcd::simd_name(use_path())); });
        return d;
    });
    py::class_<MultiIndex>(mod, "MultiIndex")
        .def(py::init<uint32_t, const std::vector<std::pair<uint32_t, uint32_t>>&, py::list>(), py::arg("bits"),
             py::arg("layout"), py::arg("tables"))
        .def("__len__", &MultiIndex::size)
        .def("radius_search", &MultiIndex::radius_search, py::arg("queries"), py::arg("radius"), py::arg("threads") = 1)
        .def("knn", &MultiIndex::knn, py::arg("queries"), py::arg("k"), py::arg("threads") = 1);
}
