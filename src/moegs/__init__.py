"""moegs: dynamic 3D scenes from video with a mixture of Gaussian-splatting experts (MoE-GS)."""

import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: OpenMP threads must not spin

__version__ = "0.1.0"
