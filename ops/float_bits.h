// Bit-exact conversions between float16 / bfloat16 storage and float, matching
// what the numpy reference does (numpy's software half conversion and
// ml_dtypes' bfloat16), so the kernel's products round exactly as numpy's.
// Written branch-free so the element loops vectorise.
#pragma once

#include <cstdint>
#include <cstring>

namespace spatialdrop {

template <typename To, typename From>
inline To BitCast(From from) {
  static_assert(sizeof(To) == sizeof(From), "BitCast needs equal sizes");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

/// binary16 -> binary32, exact; NaN payloads kept (numpy's npy_halfbits_to_floatbits).
inline float HalfToFloat(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  const uint32_t magnitude = half & 0x7fffu;
  const uint32_t normal = (magnitude << 13) + 0x38000000u;  // rebias exponent 15 -> 127
  const uint32_t special = (magnitude << 13) | 0x7f800000u;  // inf, NaN with its payload
  // Zero and subnormals: magnitude * 2^-24 is exact in float.
  const uint32_t small = BitCast<uint32_t>(static_cast<float>(static_cast<int32_t>(magnitude)) *
                                           0x1p-24f);
  const uint32_t bits = magnitude >= 0x7c00u ? special : (magnitude >= 0x0400u ? normal : small);
  return BitCast<float>(bits | sign);
}

/// binary32 -> binary16, round to nearest even; NaN keeps its top payload bits
/// and never becomes infinity (numpy's npy_floatbits_to_halfbits).
inline uint16_t FloatToHalf(float value) {
  const uint32_t bits = BitCast<uint32_t>(value);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t magnitude = bits & 0x7fffffffu;
  uint32_t nan = 0x7c00u + ((magnitude & 0x007fffffu) >> 13);
  nan = nan == 0x7c00u ? 0x7c01u : nan;
  // Normal halves: rebias and round the 13 dropped mantissa bits to nearest even.
  const uint32_t normal = (magnitude - 0x38000000u + 0x0fffu + ((magnitude >> 13) & 1u)) >> 13;
  // Below 2^-14 the FPU does the rounding: in 0.5 + |x| one ulp is 2^-24, a half subnormal step.
  const uint32_t small = BitCast<uint32_t>(BitCast<float>(magnitude) + 0.5f) - 0x3f000000u;
  const uint32_t half = magnitude > 0x7f800000u   ? nan
                        : magnitude >= 0x477ff000u ? 0x7c00u  // >= 65520 rounds to infinity
                        : magnitude >= 0x38800000u ? normal
                                                   : small;
  return static_cast<uint16_t>(half | sign);
}

/// binary64 -> binary16 rounded once to nearest even (numpy's double->half cast).
inline uint16_t DoubleToHalf(double value) {
  const uint64_t bits = BitCast<uint64_t>(value);
  const uint64_t sign = (bits >> 48) & 0x8000u;
  const uint64_t magnitude = bits & 0x7fffffffffffffffULL;
  uint64_t half;
  if (magnitude > 0x7ff0000000000000ULL) {  // NaN
    half = 0x7c00u + ((magnitude & 0x000fffffffffffffULL) >> 42);
    half = half == 0x7c00u ? 0x7c01u : half;
  } else if (magnitude >= 0x40effe0000000000ULL) {  // >= 65520
    half = 0x7c00u;
  } else if (magnitude >= 0x3f10000000000000ULL) {  // >= 2^-14: normal half
    half = (magnitude - 0x3f00000000000000ULL + 0x1ffffffffffULL + ((magnitude >> 42) & 1u)) >> 42;
  } else {  // subnormal half: in 2^28 + |x| one ulp is 2^-24
    half = BitCast<uint64_t>(BitCast<double>(magnitude) + 0x1p28) - 0x41b0000000000000ULL;
  }
  return static_cast<uint16_t>(half | sign);
}

/// bfloat16 -> float, exact.
inline float BFloat16ToFloat(uint16_t value) {
  return BitCast<float>(static_cast<uint32_t>(value) << 16);
}

/// float -> bfloat16, round to nearest even; NaN becomes the signed quiet NaN
/// 0x7fc0 / 0xffc0 (ml_dtypes' rule).
inline uint16_t FloatToBFloat16(float value) {
  const uint32_t bits = BitCast<uint32_t>(value);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t nan = ((bits >> 16) & 0x8000u) | 0x7fc0u;
  return static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

}  // namespace spatialdrop
