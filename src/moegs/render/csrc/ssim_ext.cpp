// Python bindings of the fused SSIM (see ssim.h for shapes and dtypes).
#include "ssim.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &SsimForward, "Fused SSIM, forward (CPU)");
  m.def("backward", &SsimBackward, "Fused SSIM, backward w.r.t. the image (CPU)");
}
