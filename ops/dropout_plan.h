// The parts of SpatialDropout that do not depend on the element type:
// attribute and input validation (with spatialdrop_onnx/spec.py's wording)
// and the memory layout of one run.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace spatialdrop {

/// Throws Ort::Exception(ORT_INVALID_ARGUMENT) carrying `message`.
[[noreturn]] void FailInvalid(const std::string& message);

/// Raises unless 0 <= ratio <= 1 (NaN is refused too).
void CheckRatio(double ratio);

/// Sorted non-negative shared axes for `rank`; the default when `axes` is empty.
/// Raises for rank 0, out-of-range or repeated axes.
std::vector<int64_t> ResolveSharedAxes(size_t rank, const std::optional<std::vector<int64_t>>& axes);

/// `shape` with 1 at every shared axis.
std::vector<int64_t> NoiseShape(const std::vector<int64_t>& shape,
                                const std::vector<int64_t>& shared_axes);

int64_t ElementCount(const std::vector<int64_t>& shape);

/// The data seen as rows of `inner` contiguous elements. Axes of size 1 are
/// dropped and neighbouring axes of the same kind (shared or not) merged, so a
/// [32,256,512] tensor with noise [32,1,512] becomes 32 x 256 rows of 512
/// elements that each read one contiguous run of 512 noise elements.
struct Layout {
  int64_t total = 0;          // data elements
  int64_t inner = 1;          // elements per row (the last merged axis)
  bool inner_shared = false;  // whole row shares one decision
  std::vector<int64_t> outer_dims;          // merged axes before the last, C order
  std::vector<int64_t> outer_noise_stride;  // noise stride of each; 0 for shared axes
};

Layout MakeLayout(const std::vector<int64_t>& shape, const std::vector<int64_t>& noise);

/// Walks rows in order, keeping each row's noise offset without divisions.
class RowCursor {
 public:
  RowCursor(const Layout& layout, int64_t row);
  int64_t noise_offset() const { return noise_offset_; }
  void Next();

 private:
  const Layout& layout_;
  std::vector<int64_t> index_;
  int64_t noise_offset_ = 0;
};

}  // namespace spatialdrop
