// The SpatialDropout kernel: one lite custom-op struct per (data, ratio) type pair.
//
// Run k of a kernel instance (one per node per session) draws its keep
// decisions from the Philox stream (key, call_index = k), one 64-bit word per
// noise-shape element, so a seeded node reproduces
// spatialdrop_onnx.reference.spatial_dropout(..., seed, call_index=k) bit for bit.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "dropout_plan.h"
#include "element_types.h"
#include "f16c.h"
#include "onnxruntime_cxx_api.h"
#include "op_spec.h"
#include "philox.h"
#include "streaming.h"

namespace spatialdrop {

/// Attributes, read once when ORT creates the kernel.
struct KernelConfig {
  std::optional<std::vector<int64_t>> shared_axes;
  PhiloxKey key{0, 0};
  std::string error;  // a malformed attribute, reported by every run
};

/// Never throws: an attribute problem is kept in `error` (the lite API
/// creates kernels in a callback that must not throw into onnxruntime).
KernelConfig ReadKernelConfig(const OrtApi* api, const OrtKernelInfo* info) noexcept;

namespace detail {

/// Frees what std::malloc returned (for unique_ptr).
struct FreeDeleter {
  void operator()(void* memory) const noexcept { std::free(memory); }
};

// Work per thread-pool task: large enough to amortise scheduling, small
// enough to balance (the data pass is bound by memory bandwidth).
constexpr int64_t kBytesPerTask = 256 * 1024;
constexpr uint64_t kBlocksPerTask = 512;  // 2048 Philox words
// Buffered data pass (streaming stores, in place): elements computed per window.
#ifndef SPATIALDROP_WINDOW_BYTES
#define SPATIALDROP_WINDOW_BYTES (2 * 1024)
#endif
constexpr int64_t kWindowBytes = SPATIALDROP_WINDOW_BYTES;

/// Runs fn(0..tasks-1) on the session's intra-op thread pool (ORT API 17).
/// `fn` must not throw.
template <typename Fn>
void ParallelFor(OrtKernelContext* context, size_t tasks, Fn& fn) {
  if (tasks <= 1) {
    if (tasks == 1) fn(size_t{0});
    return;
  }
  auto trampoline = [](void* user, size_t task) { (*static_cast<Fn*>(user))(task); };
  Ort::ThrowOnError(Ort::GetApi().KernelContext_ParallelFor(context, trampoline, tasks, 0, &fn));
}

inline size_t TaskCount(int64_t work, int64_t per_task) {
  return static_cast<size_t>(work <= 0 ? 0 : (work + per_task - 1) / per_task);
}

/// The input at `index`, or nullptr when the node omits it (index past the
/// count, or an empty name in the middle).
const OrtValue* OptionalInput(OrtKernelContext* context, size_t index);

/// A one-element tensor's value as double / bool; raises for other sizes.
double ReadRatio(const OrtValue* value);
bool ReadFlag(const OrtValue* value, const char* name);

const void* TensorData(const OrtValue* value);
void* MutableTensorData(OrtValue* value);
std::vector<int64_t> TensorShape(const OrtValue* value);

/// Output `index` with `shape`, or nullptr when the node does not produce it.
OrtValue* OptionalOutput(OrtKernelContext* context, size_t index,
                         const std::vector<int64_t>& shape);

/// Copy (inference mode), in parallel chunks.
void ParallelCopy(OrtKernelContext* context, const void* source, void* target, size_t bytes);

/// Kept run: out = x * factor.
template <typename D>
inline void ScaleRun(const typename D::Storage* __restrict x, typename D::Storage* __restrict out,
                     int64_t n, typename D::Factor factor) {
  if constexpr (std::is_same_v<D, Float16>) {
    if (UseF16C()) return ScaleRunF16C(x, out, nullptr, n, factor);
  } else if constexpr (std::is_same_v<D, BFloat16>) {
    if (UseAVX2()) return ScaleRunBFloat16AVX2(x, out, nullptr, n, factor);
  }
  for (int64_t j = 0; j < n; ++j) out[j] = D::Scale(x[j], factor);
}

/// Row with per-element decisions: out = bits(x * factor) & keep_bits.
template <typename D>
inline void ScaleMaskRun(const typename D::Storage* __restrict x,
                         typename D::Storage* __restrict out,
                         const typename D::Bits* __restrict keep_bits, int64_t n,
                         typename D::Factor factor) {
  using Bits = typename D::Bits;
  if constexpr (std::is_same_v<D, Float16>) {
    if (UseF16C()) return ScaleRunF16C(x, out, keep_bits, n, factor);
  } else if constexpr (std::is_same_v<D, BFloat16>) {
    if (UseAVX2()) return ScaleRunBFloat16AVX2(x, out, keep_bits, n, factor);
  }
  for (int64_t j = 0; j < n; ++j) {
    const Bits product = BitCast<Bits>(D::Scale(x[j], factor));
    out[j] = BitCast<typename D::Storage>(static_cast<Bits>(product & keep_bits[j]));
  }
}

/// Decisions for every noise element: keep_bits all ones (kept) or zero,
/// and the bool mask when the node asks for it.
template <typename D>
void DrawDecisions(OrtKernelContext* context, const PhiloxStream& stream, double ratio,
                   int64_t count, typename D::Bits* keep_bits, bool* mask) {
  using Bits = typename D::Bits;
  const uint64_t blocks = (static_cast<uint64_t>(count) + 3) / 4;
  auto task = [&](size_t t) {
    const uint64_t first = t * kBlocksPerTask;
    const uint64_t last = std::min<uint64_t>(blocks, first + kBlocksPerTask);
    for (uint64_t b = first; b < last; ++b) {
      const PhiloxBlock words = stream.Block(b);
      for (uint64_t w = 0; w < 4; ++w) {
        const uint64_t i = 4 * b + w;
        if (i >= static_cast<uint64_t>(count)) break;
        const bool keep = WordToUnitDouble(words[w]) >= ratio;
        keep_bits[i] = keep ? static_cast<Bits>(~Bits{0}) : Bits{0};
        if (mask) mask[i] = keep;
      }
    }
  };
  ParallelFor(context, TaskCount(static_cast<int64_t>(blocks), kBlocksPerTask), task);
}

/// One pass over the data, in parallel over contiguous element ranges.
///
/// Large outputs are written with streaming stores (streaming.h), in place runs
/// (onnxruntime may hand the op its input's buffer as output, see register.cc)
/// with ordinary ones; both compute each window of kWindowBytes into a buffer on
/// the stack first, so a window is read before any of it is written and the
/// element loops keep their restrict-qualified, vectorised form.
template <typename D>
void ApplyDecisions(OrtKernelContext* context, const Layout& layout,
                    const typename D::Storage* x, typename D::Storage* out,
                    const typename D::Bits* keep_bits, typename D::Factor factor) {
  using Storage = typename D::Storage;
  constexpr int64_t kWindow = kWindowBytes / static_cast<int64_t>(sizeof(Storage));
  const auto per_task = std::max<int64_t>(1, kBytesPerTask / static_cast<int64_t>(sizeof(*x)));
  const bool stream =
      static_cast<uint64_t>(layout.total) * sizeof(Storage) >= StreamingMinBytes();
  const bool buffered = stream || x == out;
  auto task = [&](size_t t) {
    int64_t begin = static_cast<int64_t>(t) * per_task;
    const int64_t end = std::min(layout.total, begin + per_task);
    int64_t column = begin % layout.inner;
    RowCursor row(layout, begin / layout.inner);
    alignas(64) Storage window[kWindow];
    while (begin < end) {
      const int64_t first = begin;
      const int64_t stop = buffered ? std::min(end, begin + kWindow) : end;
      Storage* const target = buffered ? window : out + first;  // target[i] is out[first + i]
      while (begin < stop) {
        const int64_t n = std::min(layout.inner - column, stop - begin);
        const int64_t noise = row.noise_offset();
        Storage* const to = target + (begin - first);
        if (!layout.inner_shared) {
          ScaleMaskRun<D>(x + begin, to, keep_bits + noise + column, n, factor);
        } else if (keep_bits[noise]) {
          ScaleRun<D>(x + begin, to, n, factor);
        } else {
          std::memset(to, 0, static_cast<size_t>(n) * sizeof(Storage));
        }
        begin += n;
        column += n;
        if (column == layout.inner) {
          column = 0;
          row.Next();
        }
      }
      if (buffered) {
        const size_t bytes = static_cast<size_t>(stop - first) * sizeof(Storage);
        if (stream) {
          StreamCopy(out + first, window, bytes);
        } else {
          std::memcpy(out + first, window, bytes);
        }
      }
    }
    if (stream) StreamFence();
  };
  ParallelFor(context, TaskCount(layout.total, per_task), task);
}

/// One run of the op on an ORT kernel context (the ratio's type is read at run time).
template <typename D>
void RunSpatialDropout(const KernelConfig& config, uint64_t call_index, OrtKernelContext* context) {
  if (!config.error.empty()) FailInvalid(config.error);
  const OrtValue* data = OptionalInput(context, 0);
  if (data == nullptr) FailInvalid(std::string(kOpType) + " needs its data input");
  const OrtValue* ratio_value = OptionalInput(context, 1);
  const OrtValue* training_value = OptionalInput(context, 2);

  // Same order of checks as the reference: ratio, then rank and axes.
  const double ratio = ratio_value ? ReadRatio(ratio_value) : kDefaultRatio;
  CheckRatio(ratio);
  const bool training = training_value ? ReadFlag(training_value, "training_mode")
                                        : kDefaultTrainingMode;
  const std::vector<int64_t> shape = TensorShape(data);
  const std::vector<int64_t> noise = NoiseShape(shape, ResolveSharedAxes(shape.size(),
                                                                         config.shared_axes));
  OrtValue* output = OptionalOutput(context, 0, shape);
  if (output == nullptr) FailInvalid(std::string(kOpType) + " needs its output");
  OrtValue* mask_value = OptionalOutput(context, 1, noise);

  using Storage = typename D::Storage;
  const int64_t total = ElementCount(shape);
  const int64_t noise_count = ElementCount(noise);
  const auto* x = total ? static_cast<const Storage*>(TensorData(data)) : nullptr;
  auto* out = total ? static_cast<Storage*>(MutableTensorData(output)) : nullptr;
  bool* mask = mask_value && noise_count ? static_cast<bool*>(MutableTensorData(mask_value))
                                         : nullptr;

  if (!training || ratio == 0.0) {  // identity; every decision is "keep"
    ParallelCopy(context, x, out, static_cast<size_t>(total) * sizeof(Storage));
    if (mask) std::memset(mask, 1, static_cast<size_t>(noise_count));
    return;
  }
  // Left uninitialised: every element is written by DrawDecisions. (malloc, not
  // new[]: GCC 12 emits __throw_bad_array_new_length for new[], a GLIBCXX_3.4.29
  // symbol beyond the manylinux_2_28 baseline.)
  using Bits = typename D::Bits;
  const std::unique_ptr<Bits[], FreeDeleter> keep_bits(
      static_cast<Bits*>(std::malloc(static_cast<size_t>(noise_count) * sizeof(Bits) + 1)));
  if (!keep_bits) throw std::bad_alloc();
  DrawDecisions<D>(context, PhiloxStream(config.key, call_index), ratio, noise_count,
                   keep_bits.get(), mask);
  if (total == 0) return;
  const auto factor = D::MakeFactor(1.0 / (1.0 - ratio));
  ApplyDecisions<D>(context, MakeLayout(shape, noise), x, out, keep_bits.get(), factor);
}

/// AnyFloat: the data's element type picks the typed run. Without data any typed run
/// fails first (with a malformed attribute's error, then the missing data's), before it
/// reads the data, so the messages are the typed runs' own.
template <>
inline void RunSpatialDropout<AnyFloat>(const KernelConfig& config, uint64_t call_index,
                                        OrtKernelContext* context) {
  const OrtValue* data = OptionalInput(context, 0);
  if (data == nullptr) return RunSpatialDropout<Float32>(config, call_index, context);
  if (!config.error.empty()) FailInvalid(config.error);  // before the type's own error
  switch (Ort::ConstValue(data).GetTensorTypeAndShapeInfo().GetElementType()) {
    case Float16::kOnnxType:
      return RunSpatialDropout<Float16>(config, call_index, context);
    case Float32::kOnnxType:
      return RunSpatialDropout<Float32>(config, call_index, context);
    case Float64::kOnnxType:
      return RunSpatialDropout<Float64>(config, call_index, context);
    case BFloat16::kOnnxType:
      return RunSpatialDropout<BFloat16>(config, call_index, context);
    default:
      FailInvalid(std::string(kOpType) + " needs float16, float, double or bfloat16 data");
  }
}

}  // namespace detail

/// The lite custom-op struct: attributes in the constructor, a thread-safe
/// Compute (ORT may call it from several threads at once for one session).
/// One instantiation per data type (or AnyFloat); the ratio's type only matters at
/// registration.
template <typename D>
struct SpatialDropoutKernel {
  SpatialDropoutKernel(const OrtApi* api, const OrtKernelInfo* info) noexcept
      : config_(ReadKernelConfig(api, info)) {}

  // Inputs and outputs are read from the context rather than as typed lite
  // arguments: those dereference every input slot below the input count (an
  // omitted middle input, as in (x, "", training_mode), would crash) and
  // their Data() needs ORT API 23; the types are declared at registration.
  Ort::Status Compute(OrtKernelContext* context) {
    const uint64_t call_index = calls_.fetch_add(1, std::memory_order_relaxed);
    try {
      detail::RunSpatialDropout<D>(config_, call_index, context);
      return Ort::Status{nullptr};
    } catch (const Ort::Exception& error) {
      return Ort::Status(error);
    } catch (const std::exception& error) {
      return Ort::Status(error.what(), ORT_RUNTIME_EXCEPTION);
    } catch (...) {
      return Ort::Status("SpatialDropout: unknown error", ORT_RUNTIME_EXCEPTION);
    }
  }

 private:
  const KernelConfig config_;
  std::atomic<uint64_t> calls_{0};
};

}  // namespace spatialdrop
