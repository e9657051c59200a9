// Python bindings of the compiled rasterizer (see composite.h for shapes and dtypes).
#include "composite.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &CompositeForward, "Tile alpha compositing, forward (CPU)");
  m.def("weights", &CompositeWeights, "Tile alpha compositing weights as CSR arrays (CPU)");
  m.def("backward", &CompositeBackward, "Tile alpha compositing, backward (CPU)");
}
