// CPU features and the BRCD_SIMD override, shared by the scan kernels
// (hamming_cpu.cpp) and the hash-table lookup (mih.cpp).
//
// Code is compiled for a few instruction-set levels, each implying the ones
// below it:
//   scalar  portable code, any CPU;
//   popcnt  the POPCNT instruction;
//   avx2    AVX2 with BMI1/BMI2;
//   avx512  AVX-512 F, VL, BW and VPOPCNTDQ.
// The target attributes below are what each level is compiled with, and
// detect_cpu() checks exactly those features, so a level reported usable can
// run everything built for it. No -march flag is needed: one build runs on any
// x86-64 CPU (and on other architectures, scalar only).
//
// BRCD_SIMD chooses the level: scalar, popcnt, avx2, avx512, or auto / unset /
// empty for the best this CPU has; it is read on every call, so it can change
// while a process runs. An unknown name, or a level this CPU cannot run, is an
// error (std::invalid_argument, which pybind11 raises as ValueError) naming the
// variable, the value and the choices, in the scan and the lookup alike. A
// module that builds fewer levels runs the best one it has at or below the
// chosen level (cap_to): the lookup has no avx2 build, so avx2 runs its popcnt
// build there.
#pragma once

#include <cctype>
#include <cstdlib>
#include <initializer_list>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#define BRCD_X86_64 1
#include <immintrin.h>
#else
#define BRCD_X86_64 0
#endif

#if BRCD_X86_64 && (defined(__GNUC__) || defined(__clang__))
#define BRCD_SIMD_VARIANTS 1
#define BRCD_TARGET_POPCNT __attribute__((target("popcnt")))
#define BRCD_TARGET_AVX2 __attribute__((target("avx2,popcnt,bmi,bmi2")))
#define BRCD_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512vpopcntdq,avx2,popcnt,bmi,bmi2")))
#else
#define BRCD_SIMD_VARIANTS 0
#define BRCD_TARGET_POPCNT
#endif

namespace brcd {

// Ordered: a level implies every level below it.
enum class Simd { scalar = 0, popcnt = 1, avx2 = 2, avx512 = 3 };

constexpr const char* kSimdEnv = "BRCD_SIMD";
constexpr Simd kSimdLevels[] = {Simd::avx512, Simd::avx2, Simd::popcnt, Simd::scalar};  // fastest first

inline const char* simd_name(Simd s) {
    switch (s) {
        case Simd::avx512: return "avx512";
        case Simd::avx2: return "avx2";
        case Simd::popcnt: return "popcnt";
        default: return "scalar";
    }
}

struct CpuFeatures {
    bool popcnt = false, avx2 = false, avx512 = false;
};

inline CpuFeatures detect_cpu() {
    CpuFeatures f;
#if BRCD_SIMD_VARIANTS
    __builtin_cpu_init();
    f.popcnt = __builtin_cpu_supports("popcnt") != 0;
    f.avx2 = f.popcnt && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi") &&
             __builtin_cpu_supports("bmi2");
    f.avx512 = f.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vpopcntdq");
#endif
    return f;
}

// Detected once per process (the CPU does not change under it).
inline const CpuFeatures& cpu() {
    static const CpuFeatures f = detect_cpu();
    return f;
}

// Whether this build can run level `s` on this CPU (only scalar without the SIMD builds).
inline bool cpu_supports(Simd s) {
    switch (s) {
        case Simd::avx512: return cpu().avx512;
        case Simd::avx2: return cpu().avx2;
        case Simd::popcnt: return cpu().popcnt;
        default: return true;
    }
}

inline Simd best_simd() {
    for (Simd s : kSimdLevels)
        if (cpu_supports(s)) return s;
    return Simd::scalar;
}

// The fastest of the levels a module builds (scalar among them) at or below `level`.
inline Simd cap_to(Simd level, std::initializer_list<Simd> built) {
    Simd best = Simd::scalar;
    for (Simd s : built)
        if (s <= level && s > best) best = s;
    return best;
}

inline std::string supported_simd_names() {
    std::string names;
    for (Simd s : kSimdLevels)
        if (cpu_supports(s)) names += std::string(names.empty() ? "" : ", ") + simd_name(s);
    return names;
}

// Case and surrounding blanks do not matter, as for the BRCD_*_BACKEND variables.
inline std::string normalised_simd_name(const std::string& value) {
    size_t b = 0, e = value.size();
    while (b < e && std::isspace(static_cast<unsigned char>(value[b]))) ++b;
    while (e > b && std::isspace(static_cast<unsigned char>(value[e - 1]))) --e;
    std::string name = value.substr(b, e - b);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return name;
}

// The level a BRCD_SIMD value asks for; `source` says where the value came from, for the error.
inline Simd parse_simd(const std::string& value, const std::string& source) {
    const std::string name = normalised_simd_name(value);
    if (name.empty() || name == "auto") return best_simd();
    for (Simd s : kSimdLevels) {
        if (name != simd_name(s)) continue;
        if (!cpu_supports(s)) {
            throw std::invalid_argument("SIMD path '" + value + "' (from " + source +
                                        ") needs instructions this CPU lacks; it can run " + supported_simd_names());
        }
        return s;
    }
    throw std::invalid_argument("unknown SIMD path '" + value + "' (from " + source +
                                "); choose one of scalar, popcnt, avx2, avx512, or auto (or empty) for the best "
                                "this CPU has");
}

// The level BRCD_SIMD asks for now.
inline Simd simd_from_env() {
    const char* env = std::getenv(kSimdEnv);
    return parse_simd(env ? std::string(env) : std::string(), std::string("environment variable ") + kSimdEnv);
}

// For reports (a module's cpu_features()): the name `choose()` gives, or "none (<why>)" where
// BRCD_SIMD is refused, so that `brcd info` shows the bad value instead of failing on it.
template <class Choose>
std::string simd_report(Choose&& choose) {
    try {
        return choose();
    } catch (const std::invalid_argument& e) {
        return std::string("none (") + e.what() + ")";
    }
}

}  // namespace brcd
