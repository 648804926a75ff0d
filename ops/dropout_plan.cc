#include "dropout_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "onnxruntime_cxx_api.h"
#include "op_spec.h"

namespace spatialdrop {

namespace {

// Python's repr() of a float, near enough for error messages: shortest
// round-trip digits, "nan"/"inf", "2.0" rather than "2", exponent notation
// below 1e-4 and from 1e16. Written with snprintf/strtod rather than
// std::to_chars(double), which needs GLIBCXX_3.4.29 and so a newer libstdc++
// than the manylinux_2_28 baseline.
std::string FormatFloat(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char buffer[64];
  int digits = 1;
  for (; digits < 17; ++digits) {  // the fewest significant digits that round-trip
    std::snprintf(buffer, sizeof(buffer), "%.*e", digits - 1, value);
    if (std::strtod(buffer, nullptr) == value) break;
  }
  std::snprintf(buffer, sizeof(buffer), "%.*e", digits - 1, value);
  const int exponent = value == 0.0 ? 0 : std::atoi(std::strchr(buffer, 'e') + 1);
  if (exponent < -4 || exponent >= 16) {
    // Python writes 1e-05 / 1.5e+16: mantissa, 'e', sign, at least two exponent digits.
    std::string text(buffer);
    const size_t e = text.find('e');
    std::string mantissa = text.substr(0, e);
    char sign = text[e + 1];
    std::string magnitude = std::to_string(std::abs(exponent));
    if (magnitude.size() < 2) magnitude = "0" + magnitude;
    return mantissa + "e" + sign + magnitude;
  }
  const int decimals = std::max(0, digits - 1 - exponent);
  std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, value);
  std::string text(buffer);
  if (text.find('.') == std::string::npos) text += ".0";
  return text;
}

std::string FormatList(const std::vector<int64_t>& values) {
  std::string text = "[";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(values[i]);
  }
  return text + "]";
}

}  // namespace

void FailInvalid(const std::string& message) {
  throw Ort::Exception(std::string(message), ORT_INVALID_ARGUMENT);
}

void CheckRatio(double ratio) {
  if (!(ratio >= 0.0 && ratio <= 1.0)) {  // written so that NaN fails too
    FailInvalid("ratio must be in [0, 1], got " + FormatFloat(ratio));
  }
}

std::vector<int64_t> ResolveSharedAxes(size_t rank,
                                       const std::optional<std::vector<int64_t>>& axes) {
  const auto signed_rank = static_cast<int64_t>(rank);
  if (rank < 1) {
    FailInvalid(std::string(kOpType) + " needs data of rank >= 1, got rank " +
                std::to_string(rank));
  }
  std::vector<int64_t> resolved;
  if (!axes) {
    for (int64_t axis = kDefaultFirstSharedAxis; axis < signed_rank; ++axis) {
      resolved.push_back(axis);
    }
    return resolved;
  }
  for (const int64_t axis : *axes) {
    if (axis < -signed_rank || axis >= signed_rank) {
      FailInvalid("shared_axes value " + std::to_string(axis) +
                  " is out of range for data of rank " + std::to_string(rank));
    }
    resolved.push_back(axis < 0 ? axis + signed_rank : axis);
  }
  std::sort(resolved.begin(), resolved.end());
  if (std::adjacent_find(resolved.begin(), resolved.end()) != resolved.end()) {
    FailInvalid("shared_axes " + FormatList(*axes) + " names an axis twice");
  }
  return resolved;
}

std::vector<int64_t> NoiseShape(const std::vector<int64_t>& shape,
                                const std::vector<int64_t>& shared_axes) {
  std::vector<int64_t> noise = shape;
  for (const int64_t axis : shared_axes) noise[static_cast<size_t>(axis)] = 1;
  return noise;
}

int64_t ElementCount(const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (const int64_t dim : shape) count *= dim;
  return count;
}

Layout MakeLayout(const std::vector<int64_t>& shape, const std::vector<int64_t>& noise) {
  // Merge axes into groups of one kind; size-1 axes belong to no group.
  std::vector<int64_t> sizes;
  std::vector<bool> shared;
  for (size_t axis = 0; axis < shape.size(); ++axis) {
    if (shape[axis] == 1) continue;
    const bool is_shared = noise[axis] == 1;
    if (!sizes.empty() && shared.back() == is_shared) {
      sizes.back() *= shape[axis];
    } else {
      sizes.push_back(shape[axis]);
      shared.push_back(is_shared);
    }
  }
  if (sizes.empty()) {  // a single element
    sizes.push_back(1);
    shared.push_back(false);
  }
  Layout layout;
  layout.total = ElementCount(shape);
  layout.inner = sizes.back();
  layout.inner_shared = shared.back();
  const size_t outer = sizes.size() - 1;
  layout.outer_dims.assign(sizes.begin(), sizes.begin() + static_cast<std::ptrdiff_t>(outer));
  layout.outer_noise_stride.assign(outer, 0);
  int64_t stride = layout.inner_shared ? 1 : layout.inner;
  for (size_t g = outer; g-- > 0;) {
    if (!shared[g]) {
      layout.outer_noise_stride[g] = stride;
      stride *= sizes[g];
    }
  }
  return layout;
}

RowCursor::RowCursor(const Layout& layout, int64_t row)
    : layout_(layout), index_(layout.outer_dims.size(), 0) {
  for (size_t g = index_.size(); g-- > 0;) {
    index_[g] = row % layout.outer_dims[g];
    row /= layout.outer_dims[g];
    noise_offset_ += index_[g] * layout.outer_noise_stride[g];
  }
}

void RowCursor::Next() {
  for (size_t g = index_.size(); g-- > 0;) {
    noise_offset_ += layout_.outer_noise_stride[g];
    if (++index_[g] < layout_.outer_dims[g]) return;
    noise_offset_ -= layout_.outer_noise_stride[g] * layout_.outer_dims[g];
    index_[g] = 0;
  }
}

}  // namespace spatialdrop
