#include "f16c.h"

#include <cstdlib>

#include "element_types.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define SPATIALDROP_HAVE_F16C 1
#include <immintrin.h>
#endif

namespace spatialdrop {

#if defined(SPATIALDROP_HAVE_F16C)

bool UseF16C() noexcept {
  static const bool use = [] {
    const char* off = std::getenv("SPATIALDROP_NO_F16C");
    if (off != nullptr && *off != '\0' && *off != '0') return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  }();
  return use;
}

__attribute__((target("avx,f16c"))) void ScaleRunF16C(const uint16_t* x, uint16_t* out,
                                                       const uint16_t* keep_bits, int64_t n,
                                                       float factor) noexcept {
  const __m256 scale = _mm256_set1_ps(factor);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + j));
    const __m256 product = _mm256_mul_ps(_mm256_cvtph_ps(half), scale);
    __m128i rounded = _mm256_cvtps_ph(product, _MM_FROUND_TO_NEAREST_INT);
    if (keep_bits != nullptr) {
      rounded = _mm_and_si128(
          rounded, _mm_loadu_si128(reinterpret_cast<const __m128i*>(keep_bits + j)));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), rounded);
  }
  for (; j < n; ++j) {
    const uint16_t product = Float16::Scale(x[j], factor);
    out[j] = keep_bits != nullptr ? static_cast<uint16_t>(product & keep_bits[j]) : product;
  }
}

#else

bool UseF16C() noexcept { return false; }

void ScaleRunF16C(const uint16_t*, uint16_t*, const uint16_t*, int64_t, float) noexcept {}

#endif

}  // namespace spatialdrop
