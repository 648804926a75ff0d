#include "spatial_dropout.h"

#include <chrono>
#include <random>

namespace spatialdrop {

namespace {

// True when `status` is ORT's "no such attribute" answer; frees the status.
bool IsMissingAttribute(const OrtApi* api, OrtStatus* status, std::string* other_error) {
  if (status == nullptr) return false;
  const std::string message = api->GetErrorMessage(status);
  api->ReleaseStatus(status);
  if (message.find("No attribute") != std::string::npos) return true;
  *other_error = message;
  return false;
}

PhiloxKey FreshKey() {
  try {
    std::random_device device;
    auto word = [&device] {
      return (static_cast<uint64_t>(device()) << 32) | static_cast<uint64_t>(device());
    };
    return {word(), word()};
  } catch (const std::exception&) {
    // No entropy source: fall back to the clock mixed with an address.
    const auto now = static_cast<uint64_t>(
        std::chrono::high_resolution_clock::now().time_since_epoch().count());
    static std::atomic<uint64_t> instances{0};
    return {now ^ 0x9E3779B97F4A7C15ULL * ++instances,
            reinterpret_cast<uintptr_t>(&instances) ^ now};
  }
}

}  // namespace

KernelConfig ReadKernelConfig(const OrtApi* api, const OrtKernelInfo* info) noexcept {
  KernelConfig config;
  try {
    size_t count = 0;
    OrtStatus* status = api->KernelInfoGetAttributeArray_int64(info, "shared_axes", nullptr, &count);
    if (!IsMissingAttribute(api, status, &config.error) && config.error.empty()) {
      std::vector<int64_t> axes(count);
      if (count > 0) {
        Ort::ThrowOnError(
            api->KernelInfoGetAttributeArray_int64(info, "shared_axes", axes.data(), &count));
      }
      config.shared_axes = std::move(axes);
    }
    int64_t seed = 0;
    status = api->KernelInfoGetAttribute_int64(info, "seed", &seed);
    if (status == nullptr) {
      // numpy's Philox(key=seed & (2**64 - 1)): the two's complement word.
      config.key = {static_cast<uint64_t>(seed), 0};
    } else if (IsMissingAttribute(api, status, &config.error)) {
      config.key = FreshKey();  // unseeded: a new stream per kernel instance
    }
  } catch (const std::exception& error) {
    config.error = error.what();
  }
  if (!config.error.empty()) config.error = std::string(kOpType) + ": " + config.error;
  return config;
}

namespace detail {

const OrtValue* OptionalInput(OrtKernelContext* context, size_t index) {
  const OrtApi& api = Ort::GetApi();
  size_t count = 0;
  Ort::ThrowOnError(api.KernelContext_GetInputCount(context, &count));
  if (index >= count) return nullptr;
  const OrtValue* value = nullptr;
  Ort::ThrowOnError(api.KernelContext_GetInput(context, index, &value));
  return value;
}

OrtValue* OptionalOutput(OrtKernelContext* context, size_t index,
                         const std::vector<int64_t>& shape) {
  const OrtApi& api = Ort::GetApi();
  size_t count = 0;
  Ort::ThrowOnError(api.KernelContext_GetOutputCount(context, &count));
  if (index >= count) return nullptr;
  OrtValue* value = nullptr;
  Ort::ThrowOnError(
      api.KernelContext_GetOutput(context, index, shape.data(), shape.size(), &value));
  return value;
}

std::vector<int64_t> TensorShape(const OrtValue* value) {
  return Ort::ConstValue(value).GetTensorTypeAndShapeInfo().GetShape();
}

void* MutableTensorData(OrtValue* value) {
  void* data = nullptr;
  Ort::ThrowOnError(Ort::GetApi().GetTensorMutableData(value, &data));
  return data;
}

const void* TensorData(const OrtValue* value) {
  // GetTensorData (const) only exists from ORT API 23; the kernel needs 17.
  return MutableTensorData(const_cast<OrtValue*>(value));
}

namespace {

const void* ScalarData(const OrtValue* value, const char* name,
                       ONNXTensorElementDataType* type) {
  const auto info = Ort::ConstValue(value).GetTensorTypeAndShapeInfo();
  if (info.GetElementCount() != 1) {
    FailInvalid(std::string(name) + " must be a scalar, got " +
                std::to_string(info.GetElementCount()) + " elements");
  }
  *type = info.GetElementType();
  return TensorData(value);
}

}  // namespace

double ReadRatio(const OrtValue* value) {
  ONNXTensorElementDataType type;
  const void* data = ScalarData(value, "ratio", &type);
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
      return *static_cast<const float*>(data);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE:
      return *static_cast<const double*>(data);
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
      return HalfToFloat(*static_cast<const uint16_t*>(data));
    default:
      FailInvalid("ratio must be float16, float or double");
  }
}

bool ReadFlag(const OrtValue* value, const char* name) {
  ONNXTensorElementDataType type;
  const void* data = ScalarData(value, name, &type);
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL) FailInvalid(std::string(name) + " must be bool");
  return *static_cast<const bool*>(data);
}

void ParallelCopy(OrtKernelContext* context, const void* source, void* target, size_t bytes) {
  if (bytes == 0 || source == target) return;  // in place: nothing to copy
  const auto* from = static_cast<const char*>(source);
  auto* to = static_cast<char*>(target);
  const bool stream = bytes >= StreamingMinBytes();
  auto task = [&](size_t t) {
    const size_t begin = t * static_cast<size_t>(kBytesPerTask);
    const size_t n = std::min(bytes - begin, static_cast<size_t>(kBytesPerTask));
    if (stream) {
      StreamCopy(to + begin, from + begin, n);
      StreamFence();
    } else {
      std::memcpy(to + begin, from + begin, n);
    }
  };
  ParallelFor(context, TaskCount(static_cast<int64_t>(bytes), kBytesPerTask), task);
}

}  // namespace detail
}  // namespace spatialdrop
