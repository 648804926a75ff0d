// Library entry point: RegisterCustomOps, the only exported symbol.
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "onnxruntime_cxx_api.h"
#include "onnxruntime_lite_custom_op.h"
#include "op_spec.h"
#include "spatial_dropout.h"

#if defined(_WIN32)
#define SPATIALDROP_EXPORT __declspec(dllexport)
#else
#define SPATIALDROP_EXPORT __attribute__((visibility("default")))
#endif

namespace spatialdrop {
namespace {

// The lowest OrtApi the library needs, checked against the header's
// "\since" notes and by running in onnxruntime 1.17:
//   KernelContext_ParallelFor (the intra-op thread pool)      17
//   OrtCustomOp::KernelComputeV2 (Compute returns a status)   16
//   KernelInfo_GetInputCount / GetOutputCount (lite kernels)  14
//   everything else                                           1..13
// It is also the version stamped on each OrtCustomOp, so onnxruntime reads
// only the op fields that existed in that version.
constexpr uint32_t kOrtApiVersion = 17;
constexpr const char* kMinOnnxruntime = "1.17";

// onnxruntime >= 1.24 hands an omitted input to a custom op's shape-inference
// callback as an undefined type; older versions dereference it (a crash), so the
// callback below is installed only from this version on. Older versions get one
// registration per ratio type whose data type is read at run time (AnyFloat):
// with typed ones they matched a node without its data input against the first
// (float16) and failed with that kernel's type mismatch before our code ran.
constexpr int kInferenceMajor = 1;
constexpr int kInferenceMinor = 24;

// onnxruntime >= 1.18 (ORT API 18) reads OrtCustomOp::GetMayInplace from ops stamped
// with version 18: output 0 may then reuse input 0's buffer when the data is dead
// after the node (onnxruntime's allocation planner decides; it needs the output's
// shape, which the callback above provides from 1.24 on). The ops are stamped 18
// only on such a runtime; older ones keep the API-17 layout.
constexpr uint32_t kInplaceApiVersion = 18;
constexpr int kInplaceMajor = 1;
constexpr int kInplaceMinor = 18;

/// What the running onnxruntime lets the registrations use.
struct RuntimeFeatures {
  bool infer_types = false;  // kInferenceMajor.kInferenceMinor
  bool may_inplace = false;  // kInplaceMajor.kInplaceMinor
};

using OpPtr = std::unique_ptr<Ort::Custom::OrtLiteCustomOp>;

/// Whether the running onnxruntime ("1.32.0") is at least major.minor.
bool VersionAtLeast(const char* version, int major, int minor) {
  char* end = nullptr;
  const long found_major = std::strtol(version, &end, 10);
  if (end == version || *end != '.') return false;
  const long found_minor = std::strtol(end + 1, nullptr, 10);
  return found_major > major || (found_major == major && found_minor >= minor);
}

/// Whether every dimension of `info` is a number or a name. onnxruntime writes an
/// output shape's dimension as its name if it has one and else as its number, so an
/// unnamed unknown dimension (-1) would become the *value* -1 downstream (where it
/// failed an assertion in a batch-folded Monte-Carlo model). Rank 0 is no answer
/// either: an input of unknown rank also reports no dimensions.
bool FullyDescribed(const OrtApi& api, const OrtTensorTypeAndShapeInfo* info) {
  size_t rank = 0;
  if (OrtStatus* status = api.GetDimensionsCount(info, &rank)) {
    api.ReleaseStatus(status);
    return false;
  }
  if (rank == 0) return false;
  std::vector<int64_t> dims(rank);
  std::vector<const char*> names(rank, nullptr);
  OrtStatus* status = api.GetDimensions(info, dims.data(), rank);
  if (status == nullptr) status = api.GetSymbolicDimensions(info, names.data(), rank);
  if (status != nullptr) {
    api.ReleaseStatus(status);
    return false;
  }
  for (size_t i = 0; i < rank; ++i) {
    const bool named = names[i] != nullptr && names[i][0] != '\0';
    if (dims[i] < 0 && !named) return false;
  }
  return true;
}

/// Type inference of every registration: refuse a node whose data input is
/// omitted, and give output 0 the data's type and shape.
///
/// Without the refusal onnxruntime matches the node against the first registration
/// whose present inputs fit and reports a type mismatch with *that* kernel's data
/// type ("expected type (tensor(float16))"). onnxruntime ignores the status this
/// callback returns, and an ONNX inference function refuses by throwing;
/// onnxruntime catches that around every inference call and fails the session
/// with "Node (name) Op (SpatialDropout) SpatialDropout needs its data input".
/// The output's shape (symbolic dimensions included) is what lets onnxruntime's
/// allocation planner run the node in place (MayInplace below): it only reuses an
/// input buffer for an output of the same known size.
OrtStatus* ORT_API_CALL InferTypesAndShapes(const OrtCustomOp*, OrtShapeInferContext* context) {
  const OrtApi& api = Ort::GetApi();
  size_t count = 0;
  if (OrtStatus* status = api.ShapeInferContext_GetInputCount(context, &count)) {
    api.ReleaseStatus(status);
    return nullptr;  // nothing to judge by: leave it to onnxruntime
  }
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  OrtTensorTypeAndShapeInfo* info = nullptr;  // owned by the context
  if (count > 0) {
    OrtStatus* status = api.ShapeInferContext_GetInputTypeShape(context, 0, &info);
    if (status == nullptr) status = api.GetTensorElementType(info, &type);
    if (status != nullptr) {
      api.ReleaseStatus(status);
      return nullptr;
    }
  }
  if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED) {
    throw std::invalid_argument(std::string(kOpType) + " needs its data input");
  }
  if (!FullyDescribed(api, info)) return nullptr;  // no shape: the node never runs in place
  if (OrtStatus* status = api.ShapeInferContext_SetOutputTypeShape(context, 0, info)) {
    api.ReleaseStatus(status);
  }
  return nullptr;
}

/// OrtCustomOp::GetMayInplace: output 0 (the result) may reuse input 0 (the data).
/// onnxruntime hands the arrays back to ReleaseMayInplace.
size_t ORT_API_CALL MayInplace(int** input_index, int** output_index) {
  *input_index = static_cast<int*>(std::malloc(sizeof(int)));
  *output_index = static_cast<int*>(std::malloc(sizeof(int)));
  if (*input_index == nullptr || *output_index == nullptr) {
    std::free(*input_index);
    std::free(*output_index);
    *input_index = *output_index = nullptr;
    return 0;
  }
  **input_index = 0;
  **output_index = 0;
  return 1;
}

void ORT_API_CALL ReleaseMayInplace(int* input_index, int* output_index) {
  std::free(input_index);
  std::free(output_index);
}

/// Every input and output is optional, as the lite API declares typed ones; it would
/// call an AnyFloat (undefined-type) data input or output variadic.
OrtCustomOpInputOutputCharacteristic ORT_API_CALL Optional(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_OPTIONAL;
}

/// One registration per (data, ratio) type pair: onnxruntime matches kernels by
/// the declared input types; the kernel itself reads the ratio's type at run time.
template <typename D, typename R>
void AddKernel(std::vector<OpPtr>& ops, RuntimeFeatures features) {
  OpPtr op{Ort::Custom::CreateLiteCustomOp<SpatialDropoutKernel<D>>(
      kOpType, "CPUExecutionProvider", kOpsetVersion)};
  op->input_types_ = {D::kOnnxType, R::kOnnxType, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL};
  op->output_types_ = {D::kOnnxType, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL};
  op->version = kOrtApiVersion;  // the lite header stamps its own, newer, version
  op->GetInputCharacteristic = Optional;
  op->GetOutputCharacteristic = Optional;
  if (features.infer_types) op->InferOutputShapeFn = InferTypesAndShapes;
  if (features.may_inplace) {
    op->version = kInplaceApiVersion;
    op->GetMayInplace = MayInplace;
    op->ReleaseMayInplace = ReleaseMayInplace;
  }
  ops.push_back(std::move(op));
}

template <typename D>
void AddKernelsFor(std::vector<OpPtr>& ops, RuntimeFeatures features) {
  AddKernel<D, Float16>(ops, features);
  AddKernel<D, Float32>(ops, features);
  AddKernel<D, Float64>(ops, features);
}

/// One registration per (data, ratio) type pair, created once and kept for the
/// library's lifetime: onnxruntime holds plain pointers to them. A process
/// loads one onnxruntime, so the first call's version decides for all.
const std::vector<OpPtr>& Kernels(RuntimeFeatures features) {
  static const std::vector<OpPtr> ops = [features] {
    std::vector<OpPtr> all;
    if (!features.infer_types) {
      AddKernelsFor<AnyFloat>(all, features);
      return all;
    }
    AddKernelsFor<Float16>(all, features);
    AddKernelsFor<Float32>(all, features);
    AddKernelsFor<Float64>(all, features);
    AddKernelsFor<BFloat16>(all, features);
    return all;
  }();
  return ops;
}

/// Each registration adds a domain to one SessionOptions; onnxruntime keeps
/// pointers to it, so every domain lives as long as the library.
void KeepAlive(Ort::CustomOpDomain domain) {
  static std::mutex mutex;
  static std::vector<Ort::CustomOpDomain> domains;
  const std::lock_guard<std::mutex> lock(mutex);
  domains.push_back(std::move(domain));
}

OrtStatus* TooOld(const OrtApiBase* api_base) {
  const std::string message =
      std::string("spatialdrop-onnx: the native ") + kOpType + " kernel needs onnxruntime >= " +
      kMinOnnxruntime + " (ORT API " + std::to_string(kOrtApiVersion) +
      "), but this process runs onnxruntime " + api_base->GetVersionString() +
      "; upgrade onnxruntime, or run the model without the library (make_portable)";
  const OrtApi* oldest = api_base->GetApi(1);
  return oldest->CreateStatus(ORT_FAIL, message.c_str());
}

}  // namespace
}  // namespace spatialdrop

extern "C" SPATIALDROP_EXPORT OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  using namespace spatialdrop;
  const OrtApi* api = api_base->GetApi(kOrtApiVersion);
  if (api == nullptr) return TooOld(api_base);
  Ort::InitApi(api);
  try {
    Ort::CustomOpDomain domain{kDomain};
    // The version string, not GetApi(18): asking an older onnxruntime for an API
    // it lacks prints an error on stderr.
    const char* version = api_base->GetVersionString();
    RuntimeFeatures features;
    features.infer_types = VersionAtLeast(version, kInferenceMajor, kInferenceMinor);
    features.may_inplace = VersionAtLeast(version, kInplaceMajor, kInplaceMinor);
    for (const auto& op : Kernels(features)) domain.Add(op.get());
    Ort::UnownedSessionOptions(options).Add(domain);
    KeepAlive(std::move(domain));
    return nullptr;
  } catch (const std::exception& error) {
    return api->CreateStatus(ORT_FAIL, error.what());
  }
}
