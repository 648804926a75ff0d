// Philox4x64-10 counter-based generator, laid out exactly as numpy's
// np.random.Philox so the native kernel reproduces spatialdrop_onnx.reference
// bit for bit (see reference.py for the stream contract):
//   key = (seed, 0); counter = call_index << 128, i.e. words (0, 0, call_index, 0);
//   the counter is incremented *before* each 4-word block is generated and the
//   block's words are handed out in order 0..3;
//   a word w maps to the double (w >> 11) * 2^-53.
#pragma once

#include <array>
#include <cstdint>

#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#endif

namespace spatialdrop {

using PhiloxBlock = std::array<uint64_t, 4>;
using PhiloxKey = std::array<uint64_t, 2>;

namespace philox_detail {

// Random123's Philox4x64 multipliers and Weyl key increments.
constexpr uint64_t kMul0 = 0xD2E7470EE14C6C93ULL;
constexpr uint64_t kMul1 = 0xCA5A826395121157ULL;
constexpr uint64_t kWeyl0 = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kWeyl1 = 0xBB67AE8584CAA73BULL;
constexpr int kRounds = 10;

inline uint64_t MulHiLo(uint64_t a, uint64_t b, uint64_t* hi) {
#if defined(_MSC_VER) && !defined(__clang__)
  return _umul128(a, b, hi);
#else
  const unsigned __int128 product = static_cast<unsigned __int128>(a) * b;
  *hi = static_cast<uint64_t>(product >> 64);
  return static_cast<uint64_t>(product);
#endif
}

}  // namespace philox_detail

/// One Philox4x64-10 block: the bijection of `counter` under `key`.
inline PhiloxBlock PhiloxGenerate(PhiloxBlock counter, PhiloxKey key) {
  using namespace philox_detail;
  for (int round = 0; round < kRounds; ++round) {
    if (round > 0) {
      key[0] += kWeyl0;
      key[1] += kWeyl1;
    }
    uint64_t hi0, hi1;
    const uint64_t lo0 = MulHiLo(kMul0, counter[0], &hi0);
    const uint64_t lo1 = MulHiLo(kMul1, counter[2], &hi1);
    counter = {hi1 ^ counter[1] ^ key[0], lo1, hi0 ^ counter[3] ^ key[1], lo0};
  }
  return counter;
}

/// `base + addend` on a 256-bit little-endian counter.
inline PhiloxBlock CounterAdd(PhiloxBlock base, uint64_t addend) {
  for (auto& word : base) {
    const uint64_t before = word;
    word += addend;
    addend = word < before ? 1 : 0;  // carry into the next word
    if (addend == 0) break;
  }
  return base;
}

/// The random stream of one (key, call_index) pair, addressable by block.
class PhiloxStream {
 public:
  PhiloxStream(PhiloxKey key, uint64_t call_index) : key_(key), base_{0, 0, call_index, 0} {}

  /// Block `index` (0-based) of the stream: numpy increments before use, so
  /// block 0 is generated from counter base + 1.
  PhiloxBlock Block(uint64_t index) const {
    return PhiloxGenerate(CounterAdd(base_, index + 1), key_);
  }

 private:
  PhiloxKey key_;
  PhiloxBlock base_;
};

/// numpy's Generator.random(): the top 53 bits of a word as a double in [0, 1).
inline double WordToUnitDouble(uint64_t word) {
  return static_cast<double>(word >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace spatialdrop
