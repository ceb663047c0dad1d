// Test driver for the scan kernels of hamming_scan.h, without Python: every
// variant this CPU runs (avx512, avx2, popcnt on x86-64; neon on AArch64) must
// return exactly what the portable scalar variant returns, and the scalar one
// what a brute-force count and sort returns, for k-NN, radius search and
// all-pairs distances, on random and adversarial codes (all-zero, all-one,
// single-bit, all tied, codes ever closer to the query, exact matches), code
// counts that are not a multiple of any step or tile, blocks of 1, 3 and 64
// queries, k > n and every width class (1, 2, 4 and other word counts, whole
// words or a padded tail).
//
// It includes the very header the extension uses, so a cross-compiled build
// run under an emulator checks the kernels of that architecture:
//   g++ -O2 -std=c++17 -Icsrc csrc/tests/scan_test.cpp -o scan_test && ./scan_test
//   aarch64-linux-gnu-g++ -O2 -std=c++17 -Icsrc csrc/tests/scan_test.cpp -o scan_test_arm64
//   qemu-aarch64 -L /usr/aarch64-linux-gnu ./scan_test_arm64
// (tests/test_native_arm.py does both). Exit status 0: all agree; 1: a
// mismatch, described on stderr. `--bench` instead times k-NN of random codes
// per variant and width (codes compared per second on one core).

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../hamming_scan.h"

namespace {

using brcd::Selector;
using brcd::ScanVariant;

struct Codes {
    size_t n = 0, nb = 0;
    std::vector<uint8_t> bytes;
    const uint8_t* row(size_t i) const { return bytes.data() + i * nb; }
};

uint32_t brute_distance(const uint8_t* a, const uint8_t* b, size_t nb) {
    uint32_t d = 0;
    for (size_t i = 0; i < nb; ++i) d += static_cast<uint32_t>(__builtin_popcount(a[i] ^ b[i]));
    return d;
}

// (distance, index) keys of one query: all of them, sorted.
std::vector<uint64_t> brute_keys(const Codes& db, const uint8_t* q) {
    std::vector<uint64_t> keys(db.n);
    for (size_t j = 0; j < db.n; ++j) keys[j] = brcd::make_key(brute_distance(q, db.row(j), db.nb), j);
    std::sort(keys.begin(), keys.end());
    return keys;
}

enum class Op { knn, radius };

// Per query, the sorted keys a variant returns, scanning tiles of `tile` codes in blocks of `block` queries.
std::vector<std::vector<uint64_t>> run_select(const ScanVariant& v, const Codes& db, const Codes& qs, Op op,
                                              uint32_t param, size_t tile, size_t block) {
    const size_t nw = (db.nb + 7) / 8;
    const uint32_t bits = static_cast<uint32_t>(8 * db.nb);
    const std::vector<uint64_t> qw = brcd::rows_as_words(qs.bytes.data(), qs.n, qs.nb, nw);
    std::vector<std::vector<uint64_t>> out(qs.n);
    std::vector<uint64_t> scratch;
    for (size_t i0 = 0; i0 < qs.n; i0 += block) {
        const size_t i1 = std::min(qs.n, i0 + block);
        std::vector<Selector> sels(i1 - i0);
        for (Selector& s : sels) {
            if (op == Op::knn)
                s.reset_knn(param, bits);
            else
                s.reset_range(std::min(param, bits));
        }
        brcd::select_range(v, db.bytes.data(), db.nb, nw, 0, db.n, tile, qw.data() + i0 * nw, i1 - i0, sels.data(),
                           scratch);
        for (size_t i = i0; i < i1; ++i) sels[i - i0].finish(op == Op::knn ? param : SIZE_MAX, out[i]);
    }
    return out;
}

std::vector<int32_t> run_distances(const ScanVariant& v, const Codes& db, const Codes& qs, size_t tile,
                                   size_t block) {
    const size_t nw = (db.nb + 7) / 8;
    const std::vector<uint64_t> qw = brcd::rows_as_words(qs.bytes.data(), qs.n, qs.nb, nw);
    std::vector<int32_t> out(qs.n * db.n, -1);
    std::vector<uint64_t> scratch;
    for (size_t i0 = 0; i0 < qs.n; i0 += block) {
        const size_t i1 = std::min(qs.n, i0 + block);
        brcd::distances_range(v, db.bytes.data(), db.nb, nw, 0, db.n, tile, qw.data() + i0 * nw, i1 - i0,
                              out.data() + i0 * db.n, db.n, scratch);
    }
    return out;
}

// ---------------------------------------------------------------------------
// Code sets

enum class Kind { random, zeros, ones, single_bit, tied, closer, clustered };
const char* kind_name(Kind k) {
    switch (k) {
        case Kind::random: return "random";
        case Kind::zeros: return "all-zero";
        case Kind::ones: return "all-one";
        case Kind::single_bit: return "single-bit";
        case Kind::tied: return "tied";
        case Kind::closer: return "closer";
        default: return "clustered";
    }
}
constexpr Kind kKinds[] = {Kind::random, Kind::zeros, Kind::ones, Kind::single_bit,
                           Kind::tied,   Kind::closer, Kind::clustered};

void set_bit(uint8_t* row, size_t b) { row[b / 8] = static_cast<uint8_t>(row[b / 8] | (1u << (b % 8))); }

Codes make_db(Kind kind, size_t n, size_t nb, std::mt19937_64& rng, const uint8_t* query) {
    Codes c;
    c.n = n;
    c.nb = nb;
    c.bytes.assign(n * nb, 0);
    const size_t bits = 8 * nb;
    std::vector<uint8_t> centre(3 * nb);
    for (auto& b : centre) b = static_cast<uint8_t>(rng());
    for (size_t j = 0; j < n; ++j) {
        uint8_t* r = c.bytes.data() + j * nb;
        switch (kind) {
            case Kind::random:
                for (size_t i = 0; i < nb; ++i) r[i] = static_cast<uint8_t>(rng());
                break;
            case Kind::zeros: break;
            case Kind::ones: std::memset(r, 0xff, nb); break;
            case Kind::single_bit: set_bit(r, j % bits); break;
            case Kind::tied: std::memcpy(r, centre.data(), nb); break;
            case Kind::closer:
                // Distances bits, bits - 1, ..., 0, bits, ... from the query: every code lowers a k-NN threshold.
                std::memcpy(r, query, nb);
                for (size_t b = 0; b < bits - j % (bits + 1); ++b) r[b / 8] ^= static_cast<uint8_t>(1u << (b % 8));
                break;
            case Kind::clustered:
                std::memcpy(r, centre.data() + (rng() % 3) * nb, nb);
                for (int f = 0; f < 3; ++f) r[rng() % nb] ^= static_cast<uint8_t>(1u << (rng() % 8));
                break;
        }
    }
    return c;
}

// Queries: random ones, the query the database was built around, its complement, and copies of codes.
Codes make_queries(size_t nq, const Codes& db, const uint8_t* centre, std::mt19937_64& rng) {
    Codes q;
    q.n = nq;
    q.nb = db.nb;
    q.bytes.resize(nq * db.nb);
    for (size_t i = 0; i < nq; ++i) {
        uint8_t* r = q.bytes.data() + i * db.nb;
        if (i == 0) {
            std::memcpy(r, centre, db.nb);
        } else if (i == 1) {
            for (size_t b = 0; b < db.nb; ++b) r[b] = static_cast<uint8_t>(~centre[b]);
        } else if (i % 3 == 2 && db.n > 0) {
            std::memcpy(r, db.row(rng() % db.n), db.nb);
        } else {
            for (size_t b = 0; b < db.nb; ++b) r[b] = static_cast<uint8_t>(rng());
        }
    }
    return q;
}

// ---------------------------------------------------------------------------
// Checks

struct Report {
    size_t cases = 0, scalar_cases = 0, failures = 0;
    void fail(const std::string& what) {
        if (failures < 20) std::fprintf(stderr, "MISMATCH %s\n", what.c_str());
        ++failures;
    }
};

std::string describe(const char* variant, const char* op, uint32_t param, Kind kind, size_t bits, size_t n,
                     size_t tile, size_t block) {
    char buf[256];
    std::snprintf(buf, sizeof(buf), "%s %s(%u) %s codes, %zu bits, n=%zu, tile=%zu, block=%zu", variant, op, param,
                  kind_name(kind), bits, n, tile, block);
    return buf;
}

void check_case(const std::vector<const ScanVariant*>& variants, Kind kind, size_t bits, size_t n, size_t nq,
                std::mt19937_64& rng, Report& rep) {
    const size_t nb = bits / 8;
    std::vector<uint8_t> centre(nb);
    for (auto& b : centre) b = static_cast<uint8_t>(rng());
    const Codes db = make_db(kind, n, nb, rng, centre.data());
    const Codes qs = make_queries(nq, db, kind == Kind::closer ? centre.data() : db.n ? db.row(0) : centre.data(), rng);
    std::vector<std::vector<uint64_t>> truth(qs.n);
    for (size_t i = 0; i < qs.n; ++i) truth[i] = brute_keys(db, qs.row(i));

    const uint32_t L = static_cast<uint32_t>(bits);
    const uint32_t ks[] = {1, 5, static_cast<uint32_t>(n > 1 ? n - 1 : 1), static_cast<uint32_t>(n ? n : 1),
                           static_cast<uint32_t>(n + 3)};
    const uint32_t radii[] = {0, 1, L / 4, L / 2, L};
    // One tile, or tiles of 37 codes (a remainder after every step size); blocks below and above
    // kAvx512RowsBelow queries (rows in place, or word-major copies on AVX-512).
    const size_t tiles[] = {n ? n : 1, 37};
    const size_t blocks[] = {1, 3, 64};
    const ScanVariant& scalar = brcd::scan_variant(brcd::Simd::scalar);

    for (size_t tile : tiles) {
        for (size_t block : blocks) {
            for (const uint32_t k : ks) {
                const auto want = run_select(scalar, db, qs, Op::knn, k, tile, block);
                ++rep.scalar_cases;
                for (size_t i = 0; i < qs.n; ++i) {
                    const std::vector<uint64_t> top(truth[i].begin(), truth[i].begin() + std::min<size_t>(k, n));
                    if (want[i] != top) rep.fail(describe("scalar vs brute force", "knn", k, kind, bits, n, tile, block));
                }
                for (const ScanVariant* v : variants) {
                    ++rep.cases;
                    if (run_select(*v, db, qs, Op::knn, k, tile, block) != want)
                        rep.fail(describe(brcd::simd_name(v->level), "knn", k, kind, bits, n, tile, block));
                }
            }
            for (const uint32_t r : radii) {
                const auto want = run_select(scalar, db, qs, Op::radius, r, tile, block);
                ++rep.scalar_cases;
                for (size_t i = 0; i < qs.n; ++i) {
                    std::vector<uint64_t> within;
                    for (uint64_t key : truth[i])
                        if (brcd::key_distance(key) <= r) within.push_back(key);
                    if (want[i] != within) rep.fail(describe("scalar vs brute force", "radius", r, kind, bits, n, tile, block));
                }
                for (const ScanVariant* v : variants) {
                    ++rep.cases;
                    if (run_select(*v, db, qs, Op::radius, r, tile, block) != want)
                        rep.fail(describe(brcd::simd_name(v->level), "radius", r, kind, bits, n, tile, block));
                }
            }
            std::vector<int32_t> want_d(qs.n * n);
            for (size_t i = 0; i < qs.n; ++i)
                for (size_t j = 0; j < n; ++j) want_d[i * n + j] = static_cast<int32_t>(brute_distance(qs.row(i), db.row(j), nb));
            ++rep.scalar_cases;
            if (run_distances(scalar, db, qs, tile, block) != want_d)
                rep.fail(describe("scalar vs brute force", "distances", 0, kind, bits, n, tile, block));
            for (const ScanVariant* v : variants) {
                ++rep.cases;
                if (run_distances(*v, db, qs, tile, block) != want_d)
                    rep.fail(describe(brcd::simd_name(v->level), "distances", 0, kind, bits, n, tile, block));
            }
        }
    }
}

// The variants other than scalar that this CPU runs.
std::vector<const ScanVariant*> runnable_variants() {
    std::vector<const ScanVariant*> out;
    for (const ScanVariant* v : brcd::scan_variants())
        if (v->level != brcd::Simd::scalar && brcd::cpu_supports(v->level)) out.push_back(v);
    return out;
}

// Both step shapes of the AVX2 kernel where it is compiled; elsewhere the shape means nothing.
std::vector<brcd::Avx2Step> avx2_steps() {
    if (BRCD_SIMD_VARIANTS) return {brcd::Avx2Step::wide, brcd::Avx2Step::narrow};
    return {brcd::Avx2Step::wide};
}

int run_tests() {
    const std::vector<const ScanVariant*> variants = runnable_variants();
    std::printf("variants checked against scalar:");
    for (const ScanVariant* v : variants) std::printf(" %s", brcd::simd_name(v->level));
    std::printf("%s\n", variants.empty() ? " none" : "");
    std::mt19937_64 rng(20240611);
    Report rep;
    const size_t widths[] = {8, 24, 64, 72, 128, 136, 192, 256, 264, 520};
    const size_t sizes[] = {0, 1, 7, 13, 24, 61, 1003};
    for (const brcd::Avx2Step step : avx2_steps()) {
        brcd::avx2_step_slot().store(static_cast<int>(step));
        if (BRCD_SIMD_VARIANTS) std::printf("avx2 step shape: %s\n", brcd::avx2_step_name(step));
        for (const size_t bits : widths) {
            for (const Kind kind : kKinds) {
                for (const size_t n : sizes) {
                    // Enough queries for every block remainder, fewer for the widest and largest cases.
                    const size_t nq = (n > 100 || bits > 256) ? 5 : 9;
                    check_case(variants, kind, bits, n, nq, rng, rep);
                }
            }
        }
    }
    std::printf("scalar checked against brute force in %zu cases\n", rep.scalar_cases);
    std::printf("%zu variant cases, %zu mismatches\n", rep.cases, rep.failures);
    return rep.failures == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------
// Bench: k-NN of uniform random codes, one core, per variant and width.

int run_bench() {
    const size_t n = 1000000, nq = 64, k = 100;
    for (const size_t bits : {64, 128, 256}) {
        std::mt19937_64 rng(bits);
        Codes db;
        db.n = n;
        db.nb = bits / 8;
        db.bytes.resize(n * db.nb);
        for (auto& b : db.bytes) b = static_cast<uint8_t>(rng());
        Codes qs = make_queries(nq, db, db.row(0), rng);
        for (auto& b : qs.bytes) b = static_cast<uint8_t>(rng());
        const size_t tile = std::max<size_t>(1024, (256 * 1024 / bits * 8) / 32 * 32);
        for (const ScanVariant* v : brcd::scan_variants()) {
            if (!brcd::cpu_supports(v->level)) continue;
            const bool shaped = std::string(brcd::simd_name(v->level)) == "avx2";
            for (const brcd::Avx2Step step : shaped ? avx2_steps() : std::vector<brcd::Avx2Step>{brcd::Avx2Step::wide}) {
                brcd::avx2_step_slot().store(static_cast<int>(step));
                double best = 1e30;
                for (int rep = 0; rep < 3; ++rep) {
                    const auto t0 = std::chrono::steady_clock::now();
                    run_select(*v, db, qs, Op::knn, k, tile, nq);
                    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
                }
                const std::string name = std::string(brcd::simd_name(v->level)) +
                                         (shaped ? std::string(" ") + brcd::avx2_step_name(step) : std::string());
                std::printf("%-12s %3zu-bit  %7.3f G codes/s per core\n", name.c_str(), bits,
                            static_cast<double>(n) * nq / best * 1e-9);
            }
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc > 1 && std::string(argv[1]) == "--bench") return run_bench();
    return run_tests();
}
