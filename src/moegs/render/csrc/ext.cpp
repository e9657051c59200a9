// Python bindings of every compiled op, one submodule per family (see each header for shapes and dtypes).
//
// The only translation unit with pybind11 and torch's Tensor casters; the kernels (*_cpu.cpp)
// include light ATen headers only and compile in parallel with it. Neither includes
// <torch/extension.h> (the whole C++ frontend): parsing it took longer than the kernels.
#include <torch/csrc/utils/pybind.h>

#include "composite.h"
#include "hexplane.h"
#include "motion.h"
#include "project.h"
#include "smoothness.h"
#include "ssim.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  auto composite = m.def_submodule("composite", "Tile alpha compositing (CPU)");
  composite.def("forward", &CompositeForward, "Tile alpha compositing, forward (CPU)");
  composite.def("weights", &CompositeWeights, "Tile alpha compositing weights as CSR arrays (CPU)");
  composite.def("backward", &CompositeBackward, "Tile alpha compositing, backward (CPU)");

  auto project = m.def_submodule("project", "Fused projection, SH colour and tile binning (CPU)");
  project.def("forward", &ProjectForward, "Fused projection and SH colour, forward (CPU)");
  project.def("backward", &ProjectBackward, "Fused projection and SH colour, backward (CPU)");
  project.def("bin", &BinGaussiansCpu, "Tile binning, front to back within a tile (CPU)");

  auto hexplane = m.def_submodule("hexplane", "Fused HexPlane sampler (CPU)");
  hexplane.def("forward", &HexPlaneForward, "Product of bilinear plane samples, forward (CPU)");
  hexplane.def("backward", &HexPlaneBackward, "Product of bilinear plane samples, backward (CPU)");

  auto motion = m.def_submodule("motion", "Fused per-Gaussian motion of the keyframe and spacetime experts (CPU)");
  motion.def("keyframe_forward", &KeyframeMotionForward, "Keyframe (Ex4DGS) motion at one time, forward (CPU)");
  motion.def("keyframe_backward", &KeyframeMotionBackward, "Keyframe (Ex4DGS) motion at one time, backward (CPU)");
  motion.def("spacetime_forward", &SpacetimeMotionForward, "Spacetime (STG) motion at one time, forward (CPU)");
  motion.def("spacetime_backward", &SpacetimeMotionBackward, "Spacetime (STG) motion at one time, backward (CPU)");

  auto smoothness = m.def_submodule("smoothness", "Fused neighbour smoothness of per-Gaussian vectors (CPU)");
  smoothness.def("forward", &SmoothnessForward, "Per-pair smoothness terms, forward (CPU)");
  smoothness.def("backward", &SmoothnessBackward, "Gradient of their mean (CPU)");

  auto ssim = m.def_submodule("ssim", "Fused SSIM (CPU)");
  ssim.def("forward", &SsimForward, "Fused SSIM, forward (CPU)");
  ssim.def("backward", &SsimBackward, "Fused SSIM, backward w.r.t. the image (CPU)");
}
