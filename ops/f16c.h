// float16 runs with the x86 F16C conversions and bfloat16 with AVX2 integer
// rounding, chosen at run time (the library itself targets the baseline ISA).
// Same results as the portable code: the hardware rounds to nearest even and
// keeps NaN payloads like numpy for the quiet NaNs a product yields; the bfloat16
// lanes do the portable code's integer arithmetic. SPATIALDROP_NO_F16C=1 forces
// the portable path for both.
#pragma once

#include <cstdint>

namespace spatialdrop {

/// True when the CPU has AVX and F16C and SPATIALDROP_NO_F16C is unset.
bool UseF16C() noexcept;

/// out = round16(float(x) * factor) [& keep_bits]; keep_bits may be null.
/// Only call when UseF16C() is true.
void ScaleRunF16C(const uint16_t* x, uint16_t* out, const uint16_t* keep_bits, int64_t n,
                  float factor) noexcept;

/// True when the CPU has AVX2 and SPATIALDROP_NO_F16C is unset.
bool UseAVX2() noexcept;

/// bfloat16: out = round_bf16(float(x) * factor) [& keep_bits]; keep_bits may be
/// null. Only call when UseAVX2() is true.
void ScaleRunBFloat16AVX2(const uint16_t* x, uint16_t* out, const uint16_t* keep_bits,
                          int64_t n, float factor) noexcept;

}  // namespace spatialdrop
