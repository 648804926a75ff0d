// Library entry point: RegisterCustomOps, the only exported symbol.
#include <memory>
#include <mutex>
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

using OpPtr = std::unique_ptr<Ort::Custom::OrtLiteCustomOp>;

/// One registration per (data, ratio) type pair: onnxruntime matches kernels by
/// the declared input types; the kernel itself reads the ratio's type at run time.
template <typename D, typename R>
void AddKernel(std::vector<OpPtr>& ops) {
  OpPtr op{Ort::Custom::CreateLiteCustomOp<SpatialDropoutKernel<D>>(
      kOpType, "CPUExecutionProvider", kOpsetVersion)};
  op->input_types_ = {D::kOnnxType, R::kOnnxType, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL};
  op->output_types_ = {D::kOnnxType, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL};
  op->version = kOrtApiVersion;  // the lite header stamps its own, newer, version
  ops.push_back(std::move(op));
}

template <typename D>
void AddKernelsFor(std::vector<OpPtr>& ops) {
  AddKernel<D, Float16>(ops);
  AddKernel<D, Float32>(ops);
  AddKernel<D, Float64>(ops);
}

/// One registration per (data, ratio) type pair, created once and kept for the
/// library's lifetime: onnxruntime holds plain pointers to them.
const std::vector<OpPtr>& Kernels() {
  static const std::vector<OpPtr> ops = [] {
    std::vector<OpPtr> all;
    AddKernelsFor<Float16>(all);
    AddKernelsFor<Float32>(all);
    AddKernelsFor<Float64>(all);
    AddKernelsFor<BFloat16>(all);
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
    for (const auto& op : Kernels()) domain.Add(op.get());
    Ort::UnownedSessionOptions(options).Add(domain);
    KeepAlive(std::move(domain));
    return nullptr;
  } catch (const std::exception& error) {
    return api->CreateStatus(ORT_FAIL, error.what());
  }
}
