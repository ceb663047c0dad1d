// Mutation fuzzing of the 1/8-scale JPEG decoder (jpeg_eighth.h) without Python, meant to be
// built with AddressSanitizer and UndefinedBehaviorSanitizer so that any read outside the input,
// write outside a buffer, or undefined arithmetic on hostile bytes stops the run:
//   g++ -O1 -g -std=c++17 -fsanitize=address,undefined -fno-sanitize-recover=all
//       -Icsrc csrc/tests/jpeg_fuzz.cpp -o jpeg_fuzz     (one line)
//   ./jpeg_fuzz ROUNDS SEED a.jpg b.jpg ...
// Each round takes one of the given files and mutates it (overwritten bytes, a cut, inserted
// bytes, a byte of the headers changed, 0xFF bytes dropped in), then decodes it. Decoding must
// either decline or give a picture of the size the header declares; the sanitizers watch the
// rest. tests/test_jpeg_eighth.py runs it and compares decoded pictures with Pillow's.
// Prints "rounds N declined D decoded K digest H" (H: a hash of every picture and every reason, so a
// cross-compiled build run under an emulator can be compared with this machine's); exit status 0
// unless a check fails.

#include <cstdio>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "../jpeg_eighth.h"

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s ROUNDS SEED FILE...\n", argv[0]);
        return 2;
    }
    const long rounds = std::stol(argv[1]);
    std::mt19937_64 rng(std::stoull(argv[2]));
    std::vector<std::vector<uint8_t>> seeds;
    for (int i = 3; i < argc; i++) {
        std::ifstream f(argv[i], std::ios::binary);
        seeds.emplace_back((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        if (seeds.back().size() < 4) {
            std::fprintf(stderr, "%s: not a seed file\n", argv[i]);
            return 2;
        }
    }
    long declined = 0, decoded = 0;
    uint64_t digest = 1469598103934665603ull;  // FNV-1a over every outcome: equal on any machine that decodes alike
    auto mix = [&](const uint8_t* bytes, size_t n) {
        for (size_t i = 0; i < n; i++) digest = (digest ^ bytes[i]) * 1099511628211ull;
    };
    for (long r = 0; r < rounds; r++) {
        std::vector<uint8_t> d = seeds[r % seeds.size()];
        auto pos = [&](size_t lo) { return lo + static_cast<size_t>(rng() % (d.size() - lo)); };
        switch (rng() % 5) {
            case 0:
                for (int k = 1 + static_cast<int>(rng() % 4); k > 0; k--) d[pos(2)] = static_cast<uint8_t>(rng());
                break;
            case 1:
                d.resize(pos(1));
                break;
            case 2: {
                const size_t at = pos(2);
                std::vector<uint8_t> junk(1 + rng() % 8);
                for (auto& b : junk) b = static_cast<uint8_t>(rng());
                d.insert(d.begin() + static_cast<long>(at), junk.begin(), junk.end());
                break;
            }
            case 3:
                d[2 + rng() % std::min<size_t>(d.size() - 2, 700)] = static_cast<uint8_t>(rng());
                break;
            default:
                for (int k = 1 + static_cast<int>(rng() % 3); k > 0; k--) d[pos(2)] = 0xFF;
                break;
        }
        // the copy ends exactly at the data, so reading one byte past it is caught
        std::vector<uint8_t> exact(d.begin(), d.end());
        const brcd_jpeg::Result res = brcd_jpeg::decode_eighth(exact.data(), exact.size());
        if (!res.ok) {
            declined++;
            mix(reinterpret_cast<const uint8_t*>(res.reason.data()), res.reason.size());
            if (res.reason.empty()) {
                std::fprintf(stderr, "round %ld: declined without a reason\n", r);
                return 1;
            }
            continue;
        }
        decoded++;
        mix(res.pixels.data(), res.pixels.size());
        const size_t want = static_cast<size_t>(res.width) * res.height * res.channels;
        if (res.width < 1 || res.height < 1 || (res.channels != 1 && res.channels != 3) || res.pixels.size() != want) {
            std::fprintf(stderr, "round %ld: picture of %dx%dx%d with %zu bytes\n", r, res.width, res.height,
                         res.channels, res.pixels.size());
            return 1;
        }
    }
    std::printf("rounds %ld declined %ld decoded %ld digest %016llx\n", rounds, declined, decoded,
                static_cast<unsigned long long>(digest));
    return 0;
}
