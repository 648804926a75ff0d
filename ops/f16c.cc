#include "f16c.h"

#include <cstdlib>

#include "element_types.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define SPATIALDROP_HAVE_F16C 1
#include <immintrin.h>
#endif

namespace spatialdrop {

#if defined(SPATIALDROP_HAVE_F16C)

namespace {

/// SPATIALDROP_NO_F16C=1 switches every vector path of this file off.
bool VectorPathsAllowed() noexcept {
  const char* off = std::getenv("SPATIALDROP_NO_F16C");
  return off == nullptr || *off == '\0' || *off == '0';
}

}  // namespace

bool UseF16C() noexcept {
  static const bool use = [] {
    if (!VectorPathsAllowed()) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  }();
  return use;
}

bool UseAVX2() noexcept {
  static const bool use = [] {
    if (!VectorPathsAllowed()) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return use;
}

namespace {

/// Eight products data * factor, each float in the high half of a 32-bit lane (the
/// bfloat16 bits shifted up), rounded to bfloat16 bits in the low half of the lane.
/// FloatToBFloat16 (float_bits.h) eight lanes at a time: round to nearest even by adding
/// 0x7fff plus the kept part's lowest bit, NaN to the signed quiet NaN. The same
/// 32-bit wrap-around arithmetic as the scalar code, so the same bits.
__attribute__((target("avx2"))) inline __m256i RoundedProducts(__m256i widened, __m256 scale,
                                                               __m256i* is_nan) noexcept {
  const __m256i bits =
      _mm256_castps_si256(_mm256_mul_ps(_mm256_castsi256_ps(widened), scale));
  const __m256i high = _mm256_srli_epi32(bits, 16);
  *is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(0x7fffffff)),
                               _mm256_set1_epi32(0x7f800000));
  return _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)),
                       _mm256_and_si256(high, _mm256_set1_epi32(1))),
      16);
}

/// The quiet NaN of the product's sign where `is_nan`, else `rounded` (rare: callers
/// test first, which keeps the common path short).
__attribute__((target("avx2"))) inline __m256i WithQuietNaN(__m256i rounded, __m256i widened,
                                                            __m256 scale,
                                                            __m256i is_nan) noexcept {
  const __m256i bits =
      _mm256_castps_si256(_mm256_mul_ps(_mm256_castsi256_ps(widened), scale));
  const __m256i nan = _mm256_or_si256(
      _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x8000)),
      _mm256_set1_epi32(0x7fc0));
  return _mm256_blendv_epi8(rounded, nan, is_nan);
}

}  // namespace

// Sixteen values per step: interleaving the data's 16-bit words with zeros puts each
// bfloat16 in the high half of a 32-bit lane (its float value, no shift needed), and
// the unsigned pack undoes the interleave's order (both work within 128-bit lanes).
__attribute__((target("avx2"))) void ScaleRunBFloat16AVX2(const uint16_t* x, uint16_t* out,
                                                          const uint16_t* keep_bits, int64_t n,
                                                          float factor) noexcept {
  const __m256 scale = _mm256_set1_ps(factor);
  const __m256i zero = _mm256_setzero_si256();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256i data = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j));
    const __m256i low = _mm256_unpacklo_epi16(zero, data);
    const __m256i high = _mm256_unpackhi_epi16(zero, data);
    __m256i low_nan, high_nan;
    __m256i low_rounded = RoundedProducts(low, scale, &low_nan);
    __m256i high_rounded = RoundedProducts(high, scale, &high_nan);
    const __m256i any_nan = _mm256_or_si256(low_nan, high_nan);
    if (!_mm256_testz_si256(any_nan, any_nan)) {
      low_rounded = WithQuietNaN(low_rounded, low, scale, low_nan);
      high_rounded = WithQuietNaN(high_rounded, high, scale, high_nan);
    }
    __m256i packed = _mm256_packus_epi32(low_rounded, high_rounded);
    if (keep_bits != nullptr) {
      packed = _mm256_and_si256(
          packed, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keep_bits + j)));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), packed);
  }
  for (; j < n; ++j) {
    const uint16_t product = BFloat16::Scale(x[j], factor);
    out[j] = keep_bits != nullptr ? static_cast<uint16_t>(product & keep_bits[j]) : product;
  }
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

bool UseAVX2() noexcept { return false; }

void ScaleRunBFloat16AVX2(const uint16_t*, uint16_t*, const uint16_t*, int64_t, float) noexcept {}

#endif

}  // namespace spatialdrop
