// Per-dtype arithmetic of the kernel: storage, the scale factor, and the
// product "data * scale" computed exactly as numpy computes it in T.
#pragma once

#include <cstdint>

#include "float_bits.h"
#include "onnxruntime_c_api.h"

namespace spatialdrop {

// A kept value is data * scale in T's own arithmetic; a dropped one is +0,
// obtained by AND-ing the product's bits with an all-ones / all-zeros word
// (never by multiplying with 0, which would give -0 or NaN for some inputs).

struct Float32 {
  using Storage = float;
  using Bits = uint32_t;
  using Factor = float;
  static constexpr ONNXTensorElementDataType kOnnxType = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  static Factor MakeFactor(double scale) { return static_cast<float>(scale); }
  static Storage Scale(Storage x, Factor factor) { return x * factor; }
};

struct Float64 {
  using Storage = double;
  using Bits = uint64_t;
  using Factor = double;
  static constexpr ONNXTensorElementDataType kOnnxType = ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
  static Factor MakeFactor(double scale) { return scale; }
  static Storage Scale(Storage x, Factor factor) { return x * factor; }
};

// float16 and bfloat16: both operands widened to float, whose product of two
// 11-bit (8-bit) significands is exact, then rounded once to T - numpy's way.
struct Float16 {
  using Storage = uint16_t;
  using Bits = uint16_t;
  using Factor = float;  // the scale already rounded to float16, held as float
  static constexpr ONNXTensorElementDataType kOnnxType = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  // numpy rounds double -> float16 directly (one rounding).
  static Factor MakeFactor(double scale) { return HalfToFloat(DoubleToHalf(scale)); }
  static Storage Scale(Storage x, Factor factor) { return FloatToHalf(HalfToFloat(x) * factor); }
};

struct BFloat16 {
  using Storage = uint16_t;
  using Bits = uint16_t;
  using Factor = float;
  static constexpr ONNXTensorElementDataType kOnnxType = ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
  // The spec rounds the scale double -> float -> bfloat16 (two roundings), as
  // onnxruntime's Cast does; spec.kept_scale writes out the same two steps.
  static Factor MakeFactor(double scale) {
    return BFloat16ToFloat(FloatToBFloat16(static_cast<float>(scale)));
  }
  static Storage Scale(Storage x, Factor factor) {
    return FloatToBFloat16(BFloat16ToFloat(x) * factor);
  }
};

// The data type read from the tensor at run time: the kernel dispatches to one of
// the four above. Registered where onnxruntime would otherwise match a node
// without its data input against the first typed registration (register.cc).
struct AnyFloat {
  static constexpr ONNXTensorElementDataType kOnnxType = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
};

}  // namespace spatialdrop
