"""An interactive web viewer of trained experts and mixtures (viser in the browser, moegs's rasterizer on the
server): free or dataset cameras, a time slider with playback, the blend, one expert or the expert-weight
map of a mixture, gate pruning on and off, preview-then-refine rendering.

- :mod:`.config`: :class:`ViewerConfig`; :mod:`.model`: :class:`ViewModel`, a checkpoint ready to render;
- :mod:`.camera`: browser camera <-> :class:`~moegs.cameras.Camera`; :mod:`.server`: :class:`Viewer`.
"""

from .config import ViewerConfig
from .model import BLEND, WEIGHTS, ViewModel
from .server import FREE, Viewer

__all__ = ["BLEND", "FREE", "WEIGHTS", "ViewModel", "Viewer", "ViewerConfig", "serve"]


def serve(model: ViewModel, config: ViewerConfig | None = None) -> None:
    """Run a viewer of ``model`` until Ctrl-C, printing its address; stops cleanly (also when interrupted
    while starting)."""
    import sys
    import time

    viewer = None
    try:
        viewer = Viewer(model, config)
        print(f"moegs view: {viewer.url}  (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("moegs view: stopped", file=sys.stderr)
    finally:
        if viewer is not None:
            viewer.stop()
