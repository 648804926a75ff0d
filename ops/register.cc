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
// callback below is installed only from this version on.
constexpr int kInferenceMajor = 1;
constexpr int kInferenceMinor = 24;

using OpPtr = std::unique_ptr<Ort::Custom::OrtLiteCustomOp>;

/// Whether the running onnxruntime ("1.32.0") is at least major.minor.
bool VersionAtLeast(const char* version, int major, int minor) {
  char* end = nullptr;
  const long found_major = std::strtol(version, &end, 10);
  if (end == version || *end != '.') return false;
  const long found_minor = std::strtol(end + 1, nullptr, 10);
  return found_major > major || (found_major == major && found_minor >= minor);
}

/// Type inference of every registration: refuse a node whose data input is omitted.
///
/// Without it onnxruntime matches the node against the first registration whose
/// present inputs fit and reports a type mismatch with *that* kernel's data type
/// ("expected type (tensor(float16))"). onnxruntime ignores the status this
/// callback returns, and an ONNX inference function refuses by throwing;
/// onnxruntime catches that around every inference call and fails the session
/// with "Node (name) Op (SpatialDropout) SpatialDropout needs its data input".
OrtStatus* ORT_API_CALL RefuseOmittedData(const OrtCustomOp*, OrtShapeInferContext* context) {
  const OrtApi& api = Ort::GetApi();
  size_t count = 0;
  if (OrtStatus* status = api.ShapeInferContext_GetInputCount(context, &count)) {
    api.ReleaseStatus(status);
    return nullptr;  // nothing to judge by: leave it to onnxruntime
  }
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  if (count > 0) {
    OrtTensorTypeAndShapeInfo* info = nullptr;  // owned by the context
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
  return nullptr;
}

/// One registration per (data, ratio) type pair: onnxruntime matches kernels by
/// the declared input types; the kernel itself reads the ratio's type at run time.
template <typename D, typename R>
void AddKernel(std::vector<OpPtr>& ops, bool refuse_omitted_data) {
  OpPtr op{Ort::Custom::CreateLiteCustomOp<SpatialDropoutKernel<D>>(
      kOpType, "CPUExecutionProvider", kOpsetVersion)};
  op->input_types_ = {D::kOnnxType, R::kOnnxType, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL};
  op->output_types_ = {D::kOnnxType, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL};
  op->version = kOrtApiVersion;  // the lite header stamps its own, newer, version
  if (refuse_omitted_data) op->InferOutputShapeFn = RefuseOmittedData;
  ops.push_back(std::move(op));
}

template <typename D>
void AddKernelsFor(std::vector<OpPtr>& ops, bool refuse_omitted_data) {
  AddKernel<D, Float16>(ops, refuse_omitted_data);
  AddKernel<D, Float32>(ops, refuse_omitted_data);
  AddKernel<D, Float64>(ops, refuse_omitted_data);
}

/// One registration per (data, ratio) type pair, created once and kept for the
/// library's lifetime: onnxruntime holds plain pointers to them. A process
/// loads one onnxruntime, so the first call's version decides for all.
const std::vector<OpPtr>& Kernels(bool refuse_omitted_data) {
  static const std::vector<OpPtr> ops = [refuse_omitted_data] {
    std::vector<OpPtr> all;
    AddKernelsFor<Float16>(all, refuse_omitted_data);
    AddKernelsFor<Float32>(all, refuse_omitted_data);
    AddKernelsFor<Float64>(all, refuse_omitted_data);
    AddKernelsFor<BFloat16>(all, refuse_omitted_data);
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
    const bool refuse_omitted_data =
        VersionAtLeast(api_base->GetVersionString(), kInferenceMajor, kInferenceMinor);
    for (const auto& op : Kernels(refuse_omitted_data)) domain.Add(op.get());
    Ort::UnownedSessionOptions(options).Add(domain);
    KeepAlive(std::move(domain));
    return nullptr;
  } catch (const std::exception& error) {
    return api->CreateStatus(ORT_FAIL, error.what());
  }
}
