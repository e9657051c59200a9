// Python bindings of the fused HexPlane sampler (see hexplane.h for shapes and dtypes).
#include "hexplane.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &HexPlaneForward, "Product of bilinear plane samples, forward (CPU)");
  m.def("backward", &HexPlaneBackward, "Product of bilinear plane samples, backward (CPU)");
}
