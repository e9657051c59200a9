"""The web viewer: a viser server whose browser clients fly a camera, scrub time and pick what to see,
while the server renders every frame with moegs's rasterizer.

Each connected browser has a render thread. It renders a preview (``preview_scale`` of ``max_side``)
as soon as the camera, the time or a control changes and refines the frame to ``max_side`` once
nothing has changed for ``refine_after_s``; renders of all clients take turns on one lock, so the
CPU is never shared between two frames.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import viser

from ..cameras import Camera
from ..errors import ConfigError
from ..moe.viz import legend_strip
from .camera import camera_from_pose, fit_size, letterbox, pose_of, vertical_fov_to_show
from .config import ViewerConfig
from .model import WEIGHTS, ViewModel

__all__ = ["Viewer", "FREE"]

FREE = "free camera"
# Seconds after a scene camera is chosen during which a different pose from the browser is one sent
# before it received the chosen one (so the pose is sent again), not the user flying away.
PIN_GRACE_S = 0.5


@dataclass
class _Frame:
    """What a client was last sent: the state it shows and whether it is the refined one."""

    key: tuple
    refined: bool
    camera: Camera | None
    image: np.ndarray | None


class _Client:
    """One browser: its camera pin, its render thread and its last frame."""

    def __init__(self, viewer: "Viewer", client: viser.ClientHandle) -> None:
        self.viewer, self.client = viewer, client
        self.pinned: Camera | None = None  # the scene camera shown until the user moves away
        self.pinned_at = 0.0
        self.changed = time.monotonic()
        self.frame: _Frame | None = None
        self.frames_sent = 0
        self.wake = threading.Event()
        self.alive = True
        client.camera.on_update(self._camera_moved)
        self.thread = threading.Thread(target=self._loop, name=f"moegs-view-{client.client_id}", daemon=True)
        self.thread.start()

    def touch(self) -> None:
        self.changed = time.monotonic()
        self.wake.set()

    def pin(self, camera: Camera | None) -> None:
        """Show the scene ``camera`` exactly (``None``: back to the free camera where it is)."""
        self.pinned, self.pinned_at = camera, time.monotonic()
        if camera is not None:
            position, wxyz = pose_of(camera)
            cam = self.client.camera
            with self.client.atomic():
                cam.up_direction = self.viewer.up
                cam.wxyz, cam.position = wxyz, position
                aspect = cam.aspect if cam.image_height else camera.width / camera.height
                cam.fov = vertical_fov_to_show(camera, aspect)
        self.touch()

    def _camera_moved(self, _cam) -> None:
        if self.pinned is not None:
            position, wxyz = pose_of(self.pinned)
            cam = self.client.camera
            moved = np.linalg.norm(np.asarray(cam.position) - position) > 1e-4 * self.viewer.radius
            turned = abs(abs(float(np.dot(np.asarray(cam.wxyz), wxyz))) - 1.0) > 1e-6
            if (moved or turned) and time.monotonic() - self.pinned_at < PIN_GRACE_S:
                self.pin(self.pinned)  # the browser's report crossed our pose on the way: send it again
                return
            if moved or turned:
                self.pinned = None
                self.viewer.show_camera_label(FREE)
        self.touch()

    def camera(self, max_side: int, t: float) -> Camera | None:
        """The camera to render now at ``max_side`` pixels; ``None`` before the browser reported its view."""
        if self.pinned is not None:
            cam = self.pinned
            return cam.scaled(max_side / max(cam.width, cam.height)).with_time(t)
        cam = self.client.camera
        if not cam.image_height:
            return None
        w, h = fit_size(cam.aspect, max_side)
        return camera_from_pose(np.asarray(cam.position), np.asarray(cam.wxyz), float(cam.fov), w, h, t,
                                near=self.viewer.model.near)

    def _loop(self) -> None:
        v = self.viewer
        while self.alive and v.running:
            still = time.monotonic() - self.changed >= v.config.refine_after_s
            key = v.state_key(self)
            if self.frame is None or self.frame.key != key or (still and not self.frame.refined):
                try:
                    self._render(key, refined=still)
                except Exception as e:  # a failed frame is reported, the viewer keeps serving
                    print(f"moegs view: render failed: {type(e).__name__}: {e}", file=sys.stderr)
                    v.set_status(f"render failed: {type(e).__name__}: {e}")
                    self.frame = _Frame(key, True, None, None)
                continue
            self.wake.wait(v.config.refine_after_s if not self.frame.refined else 1.0)
            self.wake.clear()

    def _render(self, key: tuple, refined: bool) -> None:
        v = self.viewer
        side = v.max_side.value if refined else max(8, int(v.max_side.value * v.config.preview_scale))
        t = float(v.time.value)
        cam = self.camera(int(side), t)
        if cam is None:
            self.frame = None
            self.wake.wait(0.05)
            return
        with v.render_lock:
            start = time.perf_counter()
            image = v.model.render(cam, t, v.mode.value, pruned=v.pruned_on())
            ms = 1000.0 * (time.perf_counter() - start)
        shown = letterbox(image, self.client.camera.aspect) if self.pinned is not None else image
        self.client.scene.set_background_image(shown, format="jpeg", jpeg_quality=v.config.jpeg_quality)
        self.frame = _Frame(key, refined, cam, image)
        self.frames_sent += 1
        v.set_status(f"{cam.width}x{cam.height} in {ms:.0f} ms" + ("" if refined else " (preview)"))


class Viewer:
    """A running viewer of ``model``; :meth:`stop` ends it.

    Args:
        model: the loaded checkpoint (:class:`~moegs.viewer.model.ViewModel`).
        config: address, resolution and playback settings.

    Raises:
        ConfigError: the port is taken.
    """

    def __init__(self, model: ViewModel, config: ViewerConfig | None = None) -> None:
        self.model, self.config = model, config or ViewerConfig()
        self.config.check()
        self.render_lock = threading.Lock()
        self.running = True
        self.clients: dict[int, _Client] = {}
        self.center, self.radius = model.center_and_radius()
        self.scene_cameras = model.cameras()
        self.up = self._scene_up()
        self.server = viser.ViserServer(host=self.config.host, port=self.config.port, verbose=False)
        if self.config.port and self.server.get_port() != self.config.port:  # viser moved to the next free port
            self.server.stop()
            raise ConfigError(f"--port {self.config.port}: already in use on {self.config.host} "
                              "(choose another with --port)")
        self.server.gui.configure_theme(show_share_button=False)
        self.server.gui.main_panel.dock_right()  # beside the canvas, never over the frame
        self._build_gui()
        self._player = threading.Thread(target=self._play_loop, name="moegs-view-play", daemon=True)
        self._player.start()
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)

    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "") else "127.0.0.1"
        return f"http://{host}:{self.server.get_port()}"

    def stop(self) -> None:
        """Stop the render threads and the server."""
        self.running = False
        for c in list(self.clients.values()):
            c.alive = False
            c.wake.set()
        self.server.stop()

    # ------------------------------------------------------------------ GUI
    def _build_gui(self) -> None:
        gui, m = self.server.gui, self.model
        kind = "mixture of " + ", ".join(m.expert_names) if m.mixture is not None else f"expert {m.expert_names[0]}"
        gui.add_markdown(f"**moegs** · {kind}  \n`{m.path}`" + (f"  \n⚠ {m.notice}" if m.notice else ""))
        with gui.add_folder("Camera"):
            labels = list(self.scene_cameras)
            self.camera_choice = gui.add_dropdown("camera", [FREE, *labels], initial_value=labels[0] if labels else FREE,
                                                  hint="a training or test camera of the scene, or free flight")
            self.camera_choice.on_update(self._camera_chosen)
            self._setting_label = False
        with gui.add_folder("Time"):
            self.time = gui.add_slider("time", 0.0, 1.0, 1e-3, m.times[0] if m.times else 0.0,
                                       hint="normalised scene time; the scene's frames are the steps of ◀ ▶")
            self.time.on_update(lambda _: self._touch_all())
            self.frame_buttons = gui.add_button_group("frame", ["◀", "▶"])
            self.frame_buttons.on_click(lambda e: self.step_frame(-1 if e.target.value == "◀" else 1))
            self.playing = gui.add_checkbox("play", False)
            self.speed = gui.add_number("frames / s", self.config.fps, min=0.1, max=120.0, step=0.1)
        with gui.add_folder("Display"):
            self.mode = gui.add_dropdown("show", m.modes, initial_value=m.modes[0])
            self.mode.on_update(lambda _: self._mode_changed())
            self.legend = gui.add_image(legend_strip(m.expert_names, 320, 22, m.palette), label="legend",
                                        format="png", visible=False) if m.mixture is not None else None
            self.pruned = None
            if m.mixture is not None and m.scene is not None:
                self.pruned = gui.add_checkbox("gate-pruned", False,
                                               hint="keep the fewest Gaussians carrying "
                                                    f"{self.config.prune_keep:.0%} of the blend (moegs.moe.prune)")
                self.pruned.on_update(lambda _: self._prune_changed())
            self.prune_info = gui.add_markdown("", visible=False)
            self.max_side = gui.add_slider("max side (px)", 32, 2048, 16, self.config.max_side,
                                           hint=f"refined size; {self.config.preview_scale:.0%} of it while moving")
            self.max_side.on_update(lambda _: self._touch_all())
        self.status = gui.add_markdown("waiting for the browser's camera…")

    def _scene_up(self) -> np.ndarray:
        """World up: the mean of the scene cameras' up axes (``-y``), else ``+z``."""
        ups = [-c.camera_to_world[:3, 1].double().numpy() for c in self.scene_cameras.values()]
        up = np.mean(ups, axis=0) if ups else np.array([0.0, 0.0, 1.0])
        return up / max(np.linalg.norm(up), 1e-9)

    def show_camera_label(self, label: str) -> None:
        """Set the camera dropdown to ``label`` without re-pinning anyone."""
        self._setting_label = True
        try:
            self.camera_choice.value = label
        finally:
            self._setting_label = False

    def _camera_chosen(self, event) -> None:
        if self._setting_label:
            return
        label = self.camera_choice.value
        targets = [self.clients[event.client_id]] if event.client_id in self.clients else list(self.clients.values())
        for c in targets:
            c.pin(self.scene_cameras.get(label))

    def _mode_changed(self) -> None:
        if self.legend is not None:
            self.legend.visible = self.mode.value == WEIGHTS
        self._touch_all()

    def _prune_changed(self) -> None:
        if self.pruned.value and self.model.pruned is None:
            self.set_status("gate pruning (one mixture render per training view)…")
            with self.render_lock:
                self.model.pruned_mixture(self.config.prune_keep, self.config.prune_views)
            c = self.model.prune_counts
            self.prune_info.content = "Gaussians " + ", ".join(
                f"{n}: {a}/{b}" for n, a, b in zip(self.model.expert_names, c["after"], c["before"]))
        self.prune_info.visible = bool(self.pruned.value)
        self._touch_all()

    def pruned_on(self) -> bool:
        return self.pruned is not None and bool(self.pruned.value) and self.model.pruned is not None

    def set_status(self, text: str) -> None:
        self.status.content = f"render: {text}"

    def state_key(self, client: _Client) -> tuple:
        """Everything a frame depends on: camera (pose, view size), time, what is shown, pruning, size."""
        cam = client.client.camera
        pose = tuple(np.round(np.concatenate([np.asarray(cam.position), np.asarray(cam.wxyz)]), 7))
        return (pose, round(float(cam.fov), 7), round(float(cam.aspect), 5) if cam.image_height else 0.0,
                client.pinned is not None and client.pinned.name, float(self.time.value), self.mode.value,
                self.pruned_on(), int(self.max_side.value))

    # ------------------------------------------------------------------ time
    def step_frame(self, direction: int) -> None:
        """Move the time slider to the previous (``-1``) or next (``+1``) scene frame time."""
        times, t = self.model.times or [0.0], float(self.time.value)
        if direction > 0:
            later = [s for s in times if s > t + 1e-6]
            self.time.value = later[0] if later else times[0]
        else:
            earlier = [s for s in times if s < t - 1e-6]
            self.time.value = earlier[-1] if earlier else times[-1]

    def _play_loop(self) -> None:
        times = self.model.times or [0.0, 1.0]
        lo, hi = times[0], times[-1]
        frame_dt = (hi - lo) / max(1, len(times) - 1) if hi > lo else 1.0
        last = time.monotonic()
        while self.running:
            time.sleep(1 / 30)
            now = time.monotonic()
            if self.playing.value and hi > lo:
                t = float(self.time.value) + float(self.speed.value) * frame_dt * (now - last)
                self.time.value = lo + (t - lo) % (hi - lo) if t > hi else t
            last = now

    def _touch_all(self) -> None:
        for c in list(self.clients.values()):
            c.touch()

    # ------------------------------------------------------------------ clients
    def _connect(self, client: viser.ClientHandle) -> None:
        c = _Client(self, client)
        self.clients[client.client_id] = c
        pinned = self.scene_cameras.get(self.camera_choice.value)
        if pinned is not None:
            c.pin(pinned)
        else:  # frame the Gaussians from outside their extent
            with client.atomic():
                client.camera.up_direction = self.up
                client.camera.look_at = self.center
                client.camera.position = self.center + 2.5 * self.radius * self._side_direction()

    def _side_direction(self) -> np.ndarray:
        side = np.cross(self.up, [1.0, 0.0, 0.0])
        if np.linalg.norm(side) < 1e-3:
            side = np.cross(self.up, [0.0, 1.0, 0.0])
        side = side / np.linalg.norm(side)
        return side + 0.3 * self.up

    def _disconnect(self, client: viser.ClientHandle) -> None:
        c = self.clients.pop(client.client_id, None)
        if c is not None:
            c.alive = False
            c.wake.set()
