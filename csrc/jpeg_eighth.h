// Baseline JPEG decoded straight to 1/8 scale: the pixels libjpeg-turbo gives at scale 1/8
// (what Pillow's draft mode asks it for), in a fraction of the time.
//
// Why: at 1/8 scale every luma block becomes one pixel, its DC coefficient, so the AC
// coefficients of those blocks are parsed only to be thrown away. libjpeg-turbo still decodes
// them one Huffman symbol at a time; on a 12 MP camera JPEG that entropy decoding is nearly all
// of the decode. Here a skipped block is parsed with a table that, for the next SKIP_BITS bits
// of the stream, says how many whole symbols (code plus magnitude bits) they hold, how many
// coefficients those advance and whether the block ends there, so one lookup passes several
// symbols.
//
// Exactly libjpeg's output, or nothing: everything else follows libjpeg-turbo's arithmetic for
// this scale (1x1 IDCT for the full-resolution component, its 2x2 reduced IDCT for 4:2:0
// chroma, replication where chroma is still subsampled, the integer formulas of its YCbCr->RGB
// tables, its range limiting). Anything this decoder does not take (progressive, arithmetic
// coding, 12-bit, CMYK, Adobe-transformed colour, several scans, restart or stuffing
// irregularities, a bad Huffman code, data that ends early) makes it decline with a reason, and
// the caller's general decoder (Pillow) decides, so corrupt or unusual files behave exactly as
// before. Every read of the input is bounds-checked; tests compare the output with Pillow's byte
// for byte and run mutated files under AddressSanitizer.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace brcd_jpeg {

constexpr int FAST_BITS = 10;  // single-symbol lookup: codes up to this long in one step
constexpr int SKIP_BITS = 13;  // multi-symbol lookup for skipped blocks: 16 KB of entries, in L1 beside the rest

struct Huffman {
    bool defined = false;
    uint8_t counts[17] = {};   // counts[l]: codes of length l
    uint8_t symbols[256] = {};
    int nsym = 0;
    // derived (build()):
    int32_t maxcode[17] = {};  // largest code of length l, -1 if none (JPEG F.16)
    int32_t valoffset[17] = {};
    uint16_t fast[1 << FAST_BITS] = {};  // (length << 8) | symbol; length 0: longer or invalid
    uint16_t skip[1 << SKIP_BITS] = {};  // see skip_ac
    int32_t fast_value[1 << FAST_BITS] = {};  // value << 16 | run << 8 | bits where code and magnitude fit (AC: s > 0 only); else 0
};

struct Component {
    int id = 0, h = 1, v = 1, tq = 0;
    int td = 0, ta = 0;        // tables from the scan
    int scaled = 1;            // output pixels per block side at 1/8 scale (1, or 2 for 4:2:0 chroma)
    int plane_w = 0, plane_h = 0;
    std::vector<uint8_t> plane;
};

struct Result {
    bool ok = false;
    std::string reason;        // why it declined
    int width = 0, height = 0, channels = 0;
    std::vector<uint8_t> pixels;  // height x width x channels, row-major
};

namespace detail {

// zigzag index -> natural (row-major) index, with the 16 extra entries libjpeg keeps so that a
// run past the end of a corrupt block lands on the last coefficient instead of outside it
constexpr int kNatural[64 + 16] = {
    0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,  12, 19, 26, 33, 40, 48,
    41, 34, 27, 20, 13, 6,  7,  14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23,
    30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63,
    63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63};

// libjpeg's post-IDCT range limit for 8-bit samples: the IDCT output x (centred on 0) maps to
// table[x & 1023]; sane values clamp to 0..255, wild ones wrap as libjpeg's table does.
inline uint8_t post_idct(int x) {
    const int v = x & 1023;
    if (v < 128) return static_cast<uint8_t>(v + 128);
    if (v < 512) return 255;
    if (v < 896) return 0;
    return static_cast<uint8_t>(v - 896);
}

inline uint8_t clamp255(int x) { return static_cast<uint8_t>(x < 0 ? 0 : (x > 255 ? 255 : x)); }

inline int extend(int bits, int s) { return bits < (1 << (s - 1)) ? bits + static_cast<int>((~0u) << s) + 1 : bits; }

// A table indexed by the next `width` bits: every code of at most that many bits fills the
// entries that start with it with (length << 8) | symbol; the rest stay 0.
inline void fill_by_prefix(uint16_t* table, int width, const int* size, const unsigned* code_of, const Huffman& t) {
    std::memset(table, 0, sizeof(uint16_t) << width);
    for (int i = 0; i < t.nsym && size[i] <= width; i++) {
        const unsigned first = code_of[i] << (width - size[i]);
        for (unsigned j = 0; j < (1u << (width - size[i])); j++)
            table[first + j] = static_cast<uint16_t>((size[i] << 8) | t.symbols[i]);
    }
}

// Builds the decoding tables, refusing (as libjpeg does) more than 256 symbols, a code set that is
// not a prefix code, or DC symbols above 15.
inline bool build(Huffman& t, bool dc) {
    int size[257];
    unsigned code_of[257];
    int p = 0;
    for (int l = 1; l <= 16; l++) {
        if (p + t.counts[l] > 256) return false;
        for (int i = 0; i < t.counts[l]; i++) size[p++] = l;
    }
    size[p] = 0;
    t.nsym = p;
    if (dc)
        for (int i = 0; i < p; i++)
            if (t.symbols[i] > 15) return false;
    unsigned code = 0;
    int si = size[0];
    p = 0;
    while (size[p]) {
        while (size[p] == si) code_of[p++] = code++;
        if (code >= (1u << si)) return false;
        code <<= 1;
        si++;
    }
    p = 0;
    for (int l = 1; l <= 16; l++) {
        if (t.counts[l]) {
            t.valoffset[l] = p - static_cast<int32_t>(code_of[p]);
            p += t.counts[l];
            t.maxcode[l] = static_cast<int32_t>(code_of[p - 1]);
        } else {
            t.maxcode[l] = -1;
        }
    }
    fill_by_prefix(t.fast, FAST_BITS, size, code_of, t);
    std::memset(t.fast_value, 0, sizeof(t.fast_value));
    for (unsigned w = 0; w < (1u << FAST_BITS); w++) {
        const int e = t.fast[w], l = e >> 8, rs = e & 0xFF, r = dc ? 0 : rs >> 4, s = dc ? rs : rs & 15;
        if (l == 0 || (s == 0 && !dc) || l + s > FAST_BITS) continue;
        if (s == 0) {  // a DC difference of zero
            t.fast_value[w] = l;
            continue;
        }
        const int magnitude = static_cast<int>((w >> (FAST_BITS - l - s)) & ((1u << s) - 1));
        t.fast_value[w] = static_cast<int32_t>(static_cast<uint32_t>(extend(magnitude, s)) << 16) | (r << 8) | (l + s);
    }
    if (dc) return true;
    // Multi-symbol skip table. A symbol counts only when its code and magnitude bits both lie
    // within the window; libjpeg's loop semantics: (r, s>0) advances r+1 coefficients, ZRL (15, 0)
    // advances 16, any other (r, 0) ends the block.
    uint16_t single[1 << SKIP_BITS];
    fill_by_prefix(single, SKIP_BITS, size, code_of, t);
    for (unsigned w = 0; w < (1u << SKIP_BITS); w++) {
        int used = 0, adv = 0, ended = 0;
        while (used < SKIP_BITS && adv < 64) {
            const unsigned window = (w << used) & ((1u << SKIP_BITS) - 1);
            const int e = single[window];
            const int l = e >> 8;
            if (l == 0 || l > SKIP_BITS - used) break;
            const int rs = e & 0xFF, r = rs >> 4, s = rs & 15;
            if (s == 0 && r != 15) {
                used += l;
                ended = 1;
                break;
            }
            if (l + s > SKIP_BITS - used) break;
            used += l + s;
            adv += s ? r + 1 : 16;
        }
        t.skip[w] = static_cast<uint16_t>(used == 0 ? (127 << 6) : (used | ((adv + ended) << 6) | (ended << 13)));
    }
    return true;
}

#define BRCD_INLINE inline __attribute__((always_inline))

// The entropy-coded segment as a bit stream: stuffed 0xFF 0x00 become 0xFF; at a marker (0xFF
// then anything else) or the end of the data the stream goes on with zero bits, counted in
// `fake`, so that the decoder can tell afterwards whether it read past the segment. The hot
// loops take it by reference but are all inlined into one function, so its fields stay in
// registers; only the rare byte-by-byte refill works on a copy out of line.
struct Bits {
    const uint8_t* p;
    const uint8_t* end;
    uint64_t buf = 0;  // next bits, most significant first
    int n = 0;         // bits held in buf (bits below them may already hold the next byte's)
    int fake = 0;      // of those, zero bits added after the segment ended (the last ones)
    bool stopped = false;

    // Byte by byte, for the last 8 bytes and around 0xFF: stuffing, markers, the end.
    __attribute__((noinline)) static void refill_slow(Bits& b) {
        while (b.n < 56) {  // ends with 56..63 bits, as the fast path does
            uint8_t v = 0;
            if (!b.stopped && b.p < b.end) {
                v = *b.p;
                if (v == 0xFF) {
                    if (b.end - b.p >= 2 && b.p[1] == 0x00) {
                        b.p += 2;
                    } else {
                        b.stopped = true;  // a marker: p stays on its 0xFF
                        v = 0;
                    }
                } else {
                    b.p++;
                }
            } else {
                b.stopped = true;
            }
            if (b.stopped) {
                b.fake += 8;
                b.buf &= ~(~uint64_t(0) >> b.n);  // drop bits of a byte read ahead
            }
            b.buf |= static_cast<uint64_t>(v) << (56 - b.n);
            b.n += 8;
        }
    }
    // Tops the buffer up to 56..64 bits. Where the next 8 bytes hold no 0xFF they are taken in
    // one load: the whole bytes that fit advance p, and the bits of a byte only partly taken are
    // the true next bits, so the next refill ORs the same bits over them.
    // Bytes before a 0xFF are still taken in the load (masked to whole bytes); the 0xFF itself,
    // stuffed or a marker, goes the byte-by-byte way. Called before every symbol or window, so no
    // hard-to-predict "is the buffer low" branch sits in the hot loop.
    BRCD_INLINE void refill() {
        if (__builtin_expect(!stopped && end - p >= 8, 1)) {
            uint64_t w;
            std::memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#else
            w = __builtin_bswap64(w);  // the stream is big-endian
#endif
            const uint64_t ff = ((w & 0x7F7F7F7F7F7F7F7FULL) + 0x0101010101010101ULL) & w & 0x8080808080808080ULL;
            if (__builtin_expect(ff == 0, 1)) {
                buf |= w >> n;
                p += (63 - n) >> 3;
                n |= 56;
                return;
            }
            const int room = (63 - n) >> 3, before = __builtin_clzll(ff) >> 3;
            const int take = before < room ? before : room;
            if (take) {
                buf |= (w & ~(~uint64_t(0) >> (8 * take))) >> n;
                p += take;
                n += 8 * take;
                if (n >= 56) return;
            }
            buf &= ~(~uint64_t(0) >> n);  // nothing read ahead past the 0xFF
        }
        Bits copy = *this;
        refill_slow(copy);
        *this = copy;
    }
    BRCD_INLINE uint32_t peek(int k) const { return static_cast<uint32_t>(buf >> (64 - k)); }
    BRCD_INLINE void drop(int k) {
        buf <<= k;
        n -= k;
    }
    BRCD_INLINE int get(int k) {  // k in 1..16, n >= k
        const int v = static_cast<int>(buf >> (64 - k));
        drop(k);
        return v;
    }
    BRCD_INLINE bool overrun() const { return n < fake; }
    // At the end of a segment: only the padding of its last byte (under 8 bits) is left, and the
    // next thing in the data is a marker (bits.p on its first 0xFF). Whole bytes before the marker
    // would be data libjpeg skips with a warning; this decoder declines them instead.
    BRCD_INLINE bool at_marker() {
        if (overrun()) return false;
        if (!stopped) {
            if (n >= 8) return false;
            Bits copy = *this;
            refill_slow(copy);
            *this = copy;
            if (!stopped) return false;
        }
        return n - fake < 8;
    }
    // The marker code there (after any 0xFF fill bytes), -1 if the data ends; p moves past it.
    BRCD_INLINE int take_marker() {
        while (p < end && *p == 0xFF) p++;
        return p < end ? *p++ : -1;
    }
};

// One symbol, -1 for a bad code. Needs n >= 16.
BRCD_INLINE int decode(Bits& b, const Huffman& t) {
    const int e = t.fast[b.peek(FAST_BITS)];
    if (__builtin_expect(e >> 8, 1)) {
        b.drop(e >> 8);
        return e & 0xFF;
    }
    const int32_t code16 = static_cast<int32_t>(b.peek(16));
    for (int l = FAST_BITS + 1; l <= 16; l++) {
        const int32_t code = code16 >> (16 - l);
        if (code <= t.maxcode[l]) {
            b.drop(l);
            const int idx = t.valoffset[l] + code;
            return (idx >= 0 && idx < t.nsym) ? t.symbols[idx] : -1;
        }
    }
    return -1;
}

BRCD_INLINE bool decode_dc(Bits& b, const Huffman& t, int& pred, int16_t& dc) {
    if (b.n < 32) b.refill();
    int diff = 0;
    const int32_t f = t.fast_value[b.peek(FAST_BITS)];
    if (__builtin_expect(f & 0xFF, 1)) {
        b.drop(f & 0xFF);
        diff = f >> 16;
    } else {
        const int s = decode(b, t);
        if (s < 0) return false;
        if (s) diff = extend(b.get(s), s);
    }
    pred = static_cast<int>(static_cast<unsigned>(pred) + static_cast<unsigned>(diff));
    dc = static_cast<int16_t>(pred);
    return true;
}

// AC coefficients parsed and dropped (libjpeg's loop, several symbols a step where it can). A
// skip entry holds bits used (6 bits), then coefficients advanced plus one if the block ends
// there (7 bits, 127 when no whole symbol fits), then the end flag: one comparison tells whether
// the whole window applies here (libjpeg reads the block's next symbol only while k < 64).
// A refill leaves at least 56 bits, so four windows of SKIP_BITS follow one refill: the refill
// stays off the chain of dependent lookups that bounds this loop.
BRCD_INLINE bool skip_ac(Bits& b, const Huffman& t) {
    static_assert(4 * SKIP_BITS <= 56, "four windows per refill");
    int k = 1;
    for (;;) {
        b.refill();
        for (int j = 0; j < 4; j++) {
            const uint32_t e = t.skip[b.peek(SKIP_BITS)];
            if (__builtin_expect(k + static_cast<int>((e >> 6) & 127) > 64, 0)) goto one_symbol;
            b.drop(e & 63);  // x86 shifts take the count mod 64: no mask on the chain
            if (e >> 13) return true;
            k += (e >> 6) & 127;
            if (k == 64) return true;
        }
        continue;
    one_symbol:  // libjpeg's way: a code longer than the window, or a window past the block's end
        b.refill();
        const int rs = decode(b, t);
        if (rs < 0) return false;
        const int r = rs >> 4, s = rs & 15;
        if (s) {
            k += r;
            b.drop(s);
        } else {
            if (r != 15) return true;
            k += 15;
        }
        if (++k >= 64) return true;
    }
}

// A block whose coefficients are kept, dequantised as they are read (the products libjpeg-turbo
// forms, exact in 32 bits), plus what the 2x2 IDCT wants to know without looking at all 64:
// which columns hold anything, and a cheap bound on every magnitude. Only the entries written
// are cleared afterwards; a chroma block holds a handful.
struct KeptBlock {
    int32_t dq[64] = {};
    uint8_t written[64] = {};
    int count = 0;
    int columns = 0;  // bit c: column c holds a nonzero term
    int spread = 0;   // OR of |v| - (v < 0): at least the largest magnitude less one

    BRCD_INLINE void put(int natural, int value, const uint16_t* q) {
        const int v = value * static_cast<int16_t>(q[natural]);
        dq[natural] = v;
        written[count++ & 63] = static_cast<uint8_t>(natural);
        columns |= 1 << (natural & 7);
        spread |= v ^ (v >> 31);
    }
    BRCD_INLINE void clear() {
        for (int i = 0; i < count && i < 64; i++) dq[written[i]] = 0;  // the DC term among them
        count = columns = spread = 0;
    }
};

// AC coefficients kept (libjpeg's loop exactly); a later one at the same place replaces an earlier
// one, as in libjpeg's block.
BRCD_INLINE bool read_ac(Bits& b, const Huffman& t, const uint16_t* q, KeptBlock& block) {
    for (int k = 1; k < 64; k++) {
        b.refill();
        const int32_t f = t.fast_value[b.peek(FAST_BITS)];
        if (__builtin_expect(f & 0xFF, 1)) {  // code and magnitude in one lookup
            b.drop(f & 0xFF);
            k += (f >> 8) & 15;
            block.put(kNatural[k], f >> 16, q);
            continue;
        }
        const int rs = decode(b, t);
        if (rs < 0) return false;
        const int r = rs >> 4, s = rs & 15;
        if (s) {
            k += r;
            block.put(kNatural[k], static_cast<int16_t>(extend(b.get(s), s)), q);
        } else {
            if (r != 15) break;
            k += 15;
        }
    }
    return true;
}

// libjpeg-turbo's jpeg_idct_2x2 (13-bit constants, 2 extra bits in the first pass), in 64-bit
// arithmetic as its C code does. Its SIMD builds (used where the CPU has them) dequantise in 16
// bits, sum in 32, saturate the first pass to 16 bits and clamp the result instead of wrapping
// it; on valid data none of that ever bites, and all of them give these values. Where a corrupt
// block would make them differ, this returns false and the decoder declines, so the answer never
// depends on which libjpeg-turbo build the caller compares with.
__attribute__((noinline)) static bool idct_2x2_checked(const int32_t* dq, uint8_t* out, int stride) {
    constexpr int64_t c7 = 5906, c5 = 6967, c3 = 10426, c1 = 29692;  // FIX(0.720959822) ...
    constexpr int64_t i16 = 32767, i32 = 2147483647;
    bool tame = true;
    auto within = [&](int64_t v, int64_t bound) { tame &= (v >= -bound - 1) & (v <= bound); };
    int64_t ws[16];
    for (int col : {0, 1, 3, 5, 7}) {
        auto d = [&](int row) {
            const int64_t v = dq[row * 8 + col];
            within(v, i16);
            return v;
        };
        const int64_t t10 = d(0) * (int64_t(1) << 15);
        const int64_t t0 = d(7) * -c7 + d(5) * c5 + d(3) * -c3 + d(1) * c1;
        within(t10 + t0 + (int64_t(1) << 12), i32);
        within(t10 - t0 + (int64_t(1) << 12), i32);
        ws[col] = (t10 + t0 + (int64_t(1) << 12)) >> 13;
        ws[8 + col] = (t10 - t0 + (int64_t(1) << 12)) >> 13;
        within(ws[col], i16);
        within(ws[8 + col], i16);
    }
    for (int row = 0; row < 2; row++) {
        const int64_t* w = ws + row * 8;
        const int64_t t10 = w[0] * (int64_t(1) << 15);
        const int64_t t0 = w[7] * -c7 + w[5] * c5 + w[3] * -c3 + w[1] * c1;
        const int64_t a = t10 + t0 + (int64_t(1) << 19), b = t10 - t0 + (int64_t(1) << 19);
        within(a, i32);
        within(b, i32);
        within(a >> 20, 511);  // wrapping and clamping agree on -512..511
        within(b >> 20, 511);
        out[row * stride + 0] = post_idct(static_cast<int>(a >> 20));
        out[row * stride + 1] = post_idct(static_cast<int>(b >> 20));
    }
    return tame;
}

// The common case: every term it reads is at most 2047 in magnitude (valid data keeps them near
// 1024 and below; the block's spread bounds them for free), so no sum can reach 2^31 and no
// first-pass value 2^15 (bounds in the comments); 32-bit arithmetic is then exact and only the
// result's range is left to check. Anything larger takes idct_2x2_checked. Columns the block
// leaves empty give zeros in the first pass, and are not computed.
BRCD_INLINE bool idct_2x2(const KeptBlock& block, uint8_t* out, int stride) {
    constexpr int c7 = 5906, c5 = 6967, c3 = 10426, c1 = 29692;
    const int32_t* dq = block.dq;
    if (__builtin_expect(block.spread > 2046, 0)) {
        int worst = 0;
        for (int r : {0, 1, 3, 5, 7})
            for (int c : {0, 1, 3, 5, 7}) {
                const int m = dq[r * 8 + c] < 0 ? -dq[r * 8 + c] : dq[r * 8 + c];
                worst = m > worst ? m : worst;
            }
        if (worst > 2047) return idct_2x2_checked(dq, out, stride);
    }
    int ws[2][8] = {};  // |sum| <= 2047 * (32768 + 52991) < 2^28; |ws| < 2^15
    for (int c : {0, 1, 3, 5, 7}) {
        if (!((block.columns >> c) & 1)) continue;
        const int t10 = dq[c] * 32768;
        const int t0 = dq[56 + c] * -c7 + dq[40 + c] * c5 + dq[24 + c] * -c3 + dq[8 + c] * c1;
        ws[0][c] = (t10 + t0 + (1 << 12)) >> 13;
        ws[1][c] = (t10 - t0 + (1 << 12)) >> 13;
    }
    bool tame = true;
    for (int row = 0; row < 2; row++) {  // |sum| < 2^15 * 85759 < 2^31
        const int* w = ws[row];
        const int t10 = w[0] * 32768;
        const int t0 = w[7] * -c7 + w[5] * c5 + w[3] * -c3 + w[1] * c1;
        const int a = (t10 + t0 + (1 << 19)) >> 20, b = (t10 - t0 + (1 << 19)) >> 20;
        tame &= (a >= -512) & (a <= 511) & (b >= -512) & (b <= 511);
        out[row * stride + 0] = post_idct(a);
        out[row * stride + 1] = post_idct(b);
    }
    return tame;
}

// One row of libjpeg's ycc_rgb_convert: its tables hold these integer formulas (FIX(1.40200) =
// 91881, FIX(1.77200) = 116130, FIX(0.71414) = 46802, FIX(0.34414) = 22554 at 16 bits, ONE_HALF
// added), so computing them gives its values, in a loop the compiler vectorises.
inline void ycc_to_rgb(const uint8_t* __restrict y, const uint8_t* __restrict cb, const uint8_t* __restrict cr,
                       uint8_t* __restrict out, int n) {
    for (int i = 0; i < n; i++) {
        const int l = y[i], b = cb[i] - 128, r = cr[i] - 128;
        out[3 * i + 0] = clamp255(l + ((91881 * r + 32768) >> 16));
        out[3 * i + 1] = clamp255(l + ((-22554 * b - 46802 * r + 32768) >> 16));
        out[3 * i + 2] = clamp255(l + ((116130 * b + 32768) >> 16));
    }
}

struct Reader {
    const uint8_t* p;
    const uint8_t* end;
    bool has(size_t k) const { return static_cast<size_t>(end - p) >= k; }
    int u8() { return *p++; }
    int u16() {
        const int v = (p[0] << 8) | p[1];
        p += 2;
        return v;
    }
};

}  // namespace detail

inline Result decline(const char* why) {
    Result r;
    r.reason = why;
    return r;
}

// Decodes `data` at 1/8 scale, or declines with a reason.
inline Result decode_eighth(const uint8_t* data, size_t size) {
    using namespace detail;
    Reader in{data, data + size};
    if (!in.has(2) || in.u16() != 0xFFD8) return decline("not a JPEG (no SOI marker)");
    uint16_t quant[4][64];
    bool quant_defined[4] = {false, false, false, false};
    std::vector<Huffman> dc_tables(4), ac_tables(4);  // 25 KB each: on the heap
    std::vector<Component> comps;
    std::vector<int> scan;  // component indices in scan order
    int width = 0, height = 0, restart_interval = 0;
    bool frame = false, jfif = false;
    for (;;) {
        if (!in.has(2) || in.u8() != 0xFF) return decline("marker expected");
        int marker = in.u8();
        while (marker == 0xFF) {  // fill bytes
            if (!in.has(1)) return decline("data ends in a marker");
            marker = in.u8();
        }
        if (marker == 0xD8 || marker == 0xD9 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01 || marker == 0x00)
            return decline("unexpected marker before the scan");
        if (!in.has(2)) return decline("truncated marker segment");
        const int length = in.u16();
        if (length < 2 || !in.has(length - 2)) return decline("truncated marker segment");
        Reader seg{in.p, in.p + (length - 2)};
        in.p += length - 2;
        if (marker == 0xE0 && seg.has(14) && std::memcmp(seg.p, "JFIF\0", 5) == 0) {  // as libjpeg reads it
            jfif = true;
        } else if (marker == 0xEE && seg.has(5) && std::memcmp(seg.p, "Adobe", 5) == 0) {
            return decline("Adobe colour transform marker");
        } else if ((marker >= 0xE0 && marker <= 0xEF) || marker == 0xFE) {
            // other application data and comments: nothing for the pixels
        } else if (marker == 0xDB) {  // quantisation tables
            while (seg.has(1)) {
                const int pq_tq = seg.u8(), pq = pq_tq >> 4, tq = pq_tq & 15;
                if (tq > 3 || pq > 1 || !seg.has(pq ? 128 : 64)) return decline("bad quantisation table");
                for (int k = 0; k < 64; k++) {
                    const int v = pq ? seg.u16() : seg.u8();
                    if (v > 32767) return decline("quantisation value beyond 16-bit signed");
                    quant[tq][kNatural[k]] = static_cast<uint16_t>(v);
                }
                quant_defined[tq] = true;
            }
        } else if (marker == 0xC4) {  // Huffman tables
            while (seg.has(17)) {
                const int tc_th = seg.u8(), tc = tc_th >> 4, th = tc_th & 15;
                if (tc > 1 || th > 3) return decline("bad Huffman table id");
                Huffman& t = tc ? ac_tables[th] : dc_tables[th];
                int total = 0;
                t.counts[0] = 0;
                for (int l = 1; l <= 16; l++) total += (t.counts[l] = static_cast<uint8_t>(seg.u8()));
                if (total > 256 || !seg.has(total)) return decline("bad Huffman table");
                std::memset(t.symbols, 0, sizeof(t.symbols));
                for (int i = 0; i < total; i++) t.symbols[i] = static_cast<uint8_t>(seg.u8());
                t.defined = true;
            }
            if (seg.p != seg.end) return decline("bad Huffman table segment");
        } else if (marker == 0xDD) {
            if (length != 4) return decline("bad restart interval segment");
            restart_interval = seg.u16();
        } else if (marker == 0xC0 || marker == 0xC1) {  // baseline / extended sequential, Huffman
            if (frame) return decline("two frames");
            frame = true;
            if (!seg.has(6)) return decline("truncated frame header");
            if (seg.u8() != 8) return decline("not 8-bit samples");
            height = seg.u16();
            width = seg.u16();
            const int nc = seg.u8();
            if (height == 0 || width == 0) return decline("height defined later (DNL) or empty image");
            if ((nc != 1 && nc != 3) || seg.p + 3 * nc != seg.end) return decline("not one or three components");
            for (int i = 0; i < nc; i++) {
                Component c;
                c.id = seg.u8();
                const int hv = seg.u8();
                c.h = hv >> 4;
                c.v = hv & 15;
                c.tq = seg.u8();
                if (c.h < 1 || c.h > 4 || c.v < 1 || c.v > 4 || c.tq > 3) return decline("bad component");
                for (const Component& o : comps)
                    if (o.id == c.id) return decline("duplicate component id");
                comps.push_back(c);
            }
        } else if (marker == 0xDA) {  // start of scan
            if (!frame) return decline("scan before frame");
            if (!seg.has(1)) return decline("truncated scan header");
            const int ns = seg.u8();
            if (seg.end - seg.p != 2 * ns + 3) return decline("bad scan header length");
            if (ns != static_cast<int>(comps.size())) return decline("not one scan of every component");
            for (int i = 0; i < ns; i++) {
                const int id = seg.u8(), tables = seg.u8();
                int found = -1;
                for (size_t j = 0; j < comps.size(); j++)
                    if (comps[j].id == id) found = static_cast<int>(j);
                if (found < 0) return decline("scan names an unknown component");
                for (int s : scan)
                    if (s == found) return decline("component twice in one scan");
                comps[found].td = tables >> 4;
                comps[found].ta = tables & 15;
                if (comps[found].td > 3 || comps[found].ta > 3) return decline("bad table id in scan");
                scan.push_back(found);
            }
            const int ss = seg.u8(), se = seg.u8(), ahal = seg.u8();
            if (ss != 0 || se != 63 || ahal != 0) return decline("not a full sequential scan");
            break;
        } else if (marker >= 0xC0 && marker <= 0xCF) {
            return decline("not a baseline Huffman JPEG (progressive, lossless or arithmetic-coded)");
        } else {
            return decline("unsupported marker");
        }
    }
    const int nc = static_cast<int>(comps.size());
    if (nc == 3 && !jfif && comps[0].id == 'R' && comps[1].id == 'G' && comps[2].id == 'B')
        return decline("RGB components");
    for (Component& c : comps) {
        if (!quant_defined[c.tq]) return decline("quantisation table not defined");
        if (!dc_tables[c.td].defined || !ac_tables[c.ta].defined) return decline("Huffman table not defined");
    }
    for (int i = 0; i < 4; i++) {
        bool dc_used = false, ac_used = false;
        for (const Component& c : comps) {
            dc_used |= c.td == i;
            ac_used |= c.ta == i;
        }
        if ((dc_used && !build(dc_tables[i], true)) || (ac_used && !build(ac_tables[i], false)))
            return decline("bad Huffman table");
    }
    // Geometry at 1/8 scale (libjpeg's jpeg_core_output_dimensions and upsampler choice).
    int max_h = 1, max_v = 1;
    for (const Component& c : comps) {
        max_h = c.h > max_h ? c.h : max_h;
        max_v = c.v > max_v ? c.v : max_v;
    }
    if (nc == 1) comps[0].h = comps[0].v = max_h = max_v = 1;  // one component: one block per MCU
    int blocks_in_mcu = 0;
    for (const Component& c : comps) blocks_in_mcu += c.h * c.v;
    if (blocks_in_mcu > 10) return decline("more than 10 blocks in an MCU");
    if (width > 65500 || height > 65500) return decline("image larger than JPEG's 65500 pixel sides");
    const int out_w = (width + 7) / 8, out_h = (height + 7) / 8;
    const int mcus_x = (width + 8 * max_h - 1) / (8 * max_h), mcus_y = (height + 8 * max_v - 1) / (8 * max_v);
    for (Component& c : comps) {
        int ssize = 1;
        while (ssize < 8 && (max_h % (c.h * ssize * 2)) == 0 && (max_v % (c.v * ssize * 2)) == 0) ssize *= 2;
        if (ssize > 2) return decline("unsupported sampling factors");
        if (max_h % (c.h * ssize) != 0 || max_v % (c.v * ssize) != 0) return decline("unsupported sampling factors");
        c.scaled = ssize;
        c.plane_w = mcus_x * c.h * ssize;
        c.plane_h = mcus_y * c.v * ssize;
        c.plane.assign(static_cast<size_t>(c.plane_w) * c.plane_h, 0);
    }
    // The scan.
    Bits bits{in.p, data + size};
    int pred[3] = {0, 0, 0};
    int restarts_left = restart_interval, next_rst = 0;
    KeptBlock block;
    for (int my = 0; my < mcus_y; my++) {
        for (int mx = 0; mx < mcus_x; mx++) {
            if (restart_interval) {
                if (restarts_left == 0) {
                    // the interval's last byte is padded; then RSTn, next in turn, and a fresh bit stream
                    if (bits.overrun()) return decline("entropy data ends early");
                    if (!bits.at_marker()) return decline("data where a restart marker belongs");
                    if (bits.take_marker() != 0xD0 + next_rst) return decline("restart marker out of order");
                    bits = Bits{bits.p, data + size};
                    next_rst = (next_rst + 1) & 7;
                    pred[0] = pred[1] = pred[2] = 0;
                    restarts_left = restart_interval;
                }
                restarts_left--;
            }
            for (int ci : scan) {
                Component& c = comps[ci];
                const Huffman& dct = dc_tables[c.td];
                const Huffman& act = ac_tables[c.ta];
                const uint16_t* q = quant[c.tq];
                for (int by = 0; by < c.v; by++) {
                    for (int bx = 0; bx < c.h; bx++) {
                        int16_t dc;
                        if (!decode_dc(bits, dct, pred[ci], dc)) return decline("bad Huffman code");
                        if (c.scaled == 1) {
                            if (!skip_ac(bits, act)) return decline("bad Huffman code");
                            const int v = (static_cast<int>(dc) * static_cast<int16_t>(q[0]) + 4) >> 3;
                            c.plane[static_cast<size_t>(my * c.v + by) * c.plane_w + mx * c.h + bx] = post_idct(v);
                        } else {
                            block.put(0, dc, q);
                            if (!read_ac(bits, act, q, block)) return decline("bad Huffman code");
                            const size_t row = static_cast<size_t>((my * c.v + by) * 2), col = static_cast<size_t>((mx * c.h + bx) * 2);
                            const bool tame = idct_2x2(block, c.plane.data() + row * c.plane_w + col, c.plane_w);
                            block.clear();
                            if (!tame)
                                return decline("coefficients beyond the range libjpeg-turbo builds agree on");
                        }
                    }
                }
            }
        }
    }
    if (bits.overrun()) return decline("entropy data ends early");
    if (!bits.at_marker() || bits.take_marker() != 0xD9) return decline("the scan is not followed by the end of the image");
    // Colour.
    Result r;
    r.width = out_w;
    r.height = out_h;
    r.channels = nc;
    r.pixels.resize(static_cast<size_t>(out_w) * out_h * nc);
    if (nc == 1) {
        const Component& y = comps[0];
        for (int j = 0; j < out_h; j++) std::memcpy(&r.pixels[static_cast<size_t>(j) * out_w], &y.plane[static_cast<size_t>(j) * y.plane_w], out_w);
    } else {
        const Component &Y = comps[0], &Cb = comps[1], &Cr = comps[2];
        const int fx1 = max_h / (Cb.h * Cb.scaled), fy1 = max_v / (Cb.v * Cb.scaled);
        const int fx2 = max_h / (Cr.h * Cr.scaled), fy2 = max_v / (Cr.v * Cr.scaled);
        const int fx0 = max_h / (Y.h * Y.scaled), fy0 = max_v / (Y.v * Y.scaled);
        std::vector<uint8_t> row0, row1, row2;  // rows widened to the output (replication), where subsampled
        for (int j = 0; j < out_h; j++) {
            const uint8_t* yr = &Y.plane[static_cast<size_t>(j / fy0) * Y.plane_w];
            const uint8_t* br = &Cb.plane[static_cast<size_t>(j / fy1) * Cb.plane_w];
            const uint8_t* rr = &Cr.plane[static_cast<size_t>(j / fy2) * Cr.plane_w];
            if (fx0 != 1 || fx1 != 1 || fx2 != 1) {
                row0.resize(out_w);
                row1.resize(out_w);
                row2.resize(out_w);
                for (int i = 0; i < out_w; i++) {
                    row0[i] = yr[i / fx0];
                    row1[i] = br[i / fx1];
                    row2[i] = rr[i / fx2];
                }
                yr = row0.data();
                br = row1.data();
                rr = row2.data();
            }
            ycc_to_rgb(yr, br, rr, &r.pixels[static_cast<size_t>(j) * out_w * 3], out_w);
        }
    }
    r.ok = true;
    return r;
}

}  // namespace brcd_jpeg
