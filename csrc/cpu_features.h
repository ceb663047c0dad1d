// CPU features and the BRCD_SIMD override, shared by the scan kernels
// (hamming_scan.h, hamming_cpu.cpp) and the hash-table lookup (mih.cpp).
//
// Code is compiled for a few instruction-set levels per architecture. Each
// level names the one it falls back to, and runs everything built for it:
//   x86-64:  avx512 (AVX-512 F, VL, BW, VPOPCNTDQ) > avx2 (AVX2, BMI1/2)
//            > popcnt (the POPCNT instruction) > scalar;
//   AArch64: sve (the Scalable Vector Extension, any vector length) > neon
//            (Advanced SIMD: CNT, ADDP, UADALP) > scalar;
//   others:  scalar (portable code).
// The x86 levels are compiled with the target attributes below and
// detect_cpu() checks exactly those features, so a level reported usable can
// run everything built for it. No -march flag is needed: one build runs on any
// x86-64 CPU. On AArch64 Advanced SIMD is part of the base architecture the
// compiler targets, so the neon level needs no attribute (the kernel still
// checks HWCAP_ASIMD); the SVE kernels are compiled under a target pragma
// (hamming_scan.h) and chosen where the CPU reports HWCAP_SVE.
//
// BRCD_SIMD chooses the level: one of this architecture's names, or auto /
// unset / empty for the best this CPU has; it is read on every call, so it can
// change while a process runs. An unknown name, or a level this CPU cannot run,
// is an error (ChoiceError, a std::invalid_argument, which the bindings raise
// as brcd_cli.kernels._registry.ChoiceError, a ValueError) naming the
// variable, the value and the choices, in the scan and the lookup alike. A
// module that builds fewer levels runs the best one it has on the chosen
// level's fallback chain (cap_to): the lookup has no avx2 build, so avx2 runs
// its popcnt build there.
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

#if defined(__aarch64__) && defined(__ARM_NEON)
#define BRCD_NEON 1
#include <arm_neon.h>
#if defined(__linux__)
#include <sys/auxv.h>
#endif
#else
#define BRCD_NEON 0
#endif

// SVE kernels need the ACLE header under a per-region target pragma (GCC 12 and
// later compile it so) and a way to ask the CPU (Linux's HWCAP_SVE).
#if BRCD_NEON && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__linux__) && \
    defined(HWCAP_SVE)
#define BRCD_SVE 1
#else
#define BRCD_SVE 0
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

// A BRCD_* choice (a SIMD path, the AVX2 step shape) that is unknown or that this CPU cannot run. The Python
// bindings raise it as brcd_cli.kernels._registry.ChoiceError (choice_error_py.h), the error every dispatch
// raises for a name it does not have, so each command shows it as one line.
struct ChoiceError : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

enum class Simd { scalar, popcnt, avx2, avx512, neon, sve };

// One row per level this architecture has, fastest first; `fallback` is the
// level it implies (what a module without a build of it runs instead).
struct SimdLevel {
    Simd level;
    const char* name;
    Simd fallback;
};

constexpr SimdLevel kSimdLevels[] = {
#if BRCD_X86_64
    {Simd::avx512, "avx512", Simd::avx2},
    {Simd::avx2, "avx2", Simd::popcnt},
    {Simd::popcnt, "popcnt", Simd::scalar},
#endif
#if BRCD_SVE
    {Simd::sve, "sve", Simd::neon},
#endif
#if BRCD_NEON
    {Simd::neon, "neon", Simd::scalar},
#endif
    {Simd::scalar, "scalar", Simd::scalar},
};

constexpr const char* kSimdEnv = "BRCD_SIMD";

inline const SimdLevel& level_info(Simd s) {
    for (const SimdLevel& l : kSimdLevels)
        if (l.level == s) return l;
    return kSimdLevels[sizeof(kSimdLevels) / sizeof(kSimdLevels[0]) - 1];  // scalar
}

inline const char* simd_name(Simd s) { return level_info(s).name; }

struct CpuFeatures {
    bool popcnt = false, avx2 = false, avx512 = false, neon = false, sve = false;
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
#if BRCD_NEON
#if defined(__linux__) && defined(HWCAP_ASIMD)
    f.neon = (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
#else
    f.neon = true;  // the compiler already assumed Advanced SIMD for this whole build
#endif
#endif
#if BRCD_SVE
    f.sve = f.neon && (getauxval(AT_HWCAP) & HWCAP_SVE) != 0;
#endif
    return f;
}

// Detected once per process (the CPU does not change under it).
inline const CpuFeatures& cpu() {
    static const CpuFeatures f = detect_cpu();
    return f;
}

// Whether this build can run level `s` on this CPU (only scalar without a SIMD build for it).
inline bool cpu_supports(Simd s) {
    switch (s) {
        case Simd::avx512: return cpu().avx512;
        case Simd::avx2: return cpu().avx2;
        case Simd::popcnt: return cpu().popcnt;
        case Simd::neon: return cpu().neon;
        case Simd::sve: return cpu().sve;
        default: return true;
    }
}

inline Simd best_simd() {
    for (const SimdLevel& l : kSimdLevels)
        if (cpu_supports(l.level)) return l.level;
    return Simd::scalar;
}

// The first level a module builds (scalar among them) on the fallback chain from `level`.
inline Simd cap_to(Simd level, std::initializer_list<Simd> built) {
    for (Simd s = level;; s = level_info(s).fallback) {
        for (Simd b : built)
            if (b == s) return s;
        if (s == Simd::scalar) return Simd::scalar;
    }
}

inline std::string joined_simd_names(bool supported_only) {
    std::string names;
    for (const SimdLevel& l : kSimdLevels) {
        if (supported_only && !cpu_supports(l.level)) continue;
        names += std::string(names.empty() ? "" : ", ") + l.name;
    }
    return names;
}

inline std::string supported_simd_names() { return joined_simd_names(true); }

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
    for (const SimdLevel& l : kSimdLevels) {
        if (name != l.name) continue;
        if (!cpu_supports(l.level)) {
            throw ChoiceError("SIMD path '" + value + "' (from " + source +
                                        ") needs instructions this CPU lacks; it can run " + supported_simd_names());
        }
        return l.level;
    }
    // The choices listed are this architecture's, in the order they fall back (ascending).
    std::string choices;
    for (size_t i = sizeof(kSimdLevels) / sizeof(kSimdLevels[0]); i-- > 0;)
        choices += std::string(choices.empty() ? "" : ", ") + kSimdLevels[i].name;
    throw ChoiceError("unknown SIMD path '" + value + "' (from " + source + "); choose one of " + choices +
                                ", or auto (or empty) for the best this CPU has");
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
