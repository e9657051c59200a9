// Python bindings of the fused projection (see project.h for shapes and dtypes).
#include "project.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &ProjectForward, "Fused projection and SH colour, forward (CPU)");
  m.def("backward", &ProjectBackward, "Fused projection and SH colour, backward (CPU)");
  m.def("bin", &BinGaussiansCpu, "Tile binning, front to back within a tile (CPU)");
}
