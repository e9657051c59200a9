"""``moegs view`` in a real headless browser (Debian's chromium driven by Playwright): the frames the page
shows are moegs renders of the shown camera and time, the weight map uses the legend's colours, the page
logs no errors; bad checkpoints and a taken port end in one line and exit 2."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moegs.cli.main import main
from moegs.experts import render_expert
from moegs.viewer import FREE, WEIGHTS, ViewModel, Viewer, ViewerConfig
from moegs.viewer.camera import FREE_NEAR

CHROMIUM = Path("/usr/bin/chromium")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")]

SIDE = 128  # the viewer's still-frame size in these tests


def _ok(argv):
    assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def runs(toy_scene_dir, tmp_path_factory):
    """A static and a spacetime expert and a mixture of the two, each trained a few steps on the tiny scene;
    the spacetime expert's Gaussians are then set half opaque at all times, a twentieth of the scene's extent
    wide, and moving by half its extent over the clip, so that time visibly matters."""
    root = tmp_path_factory.mktemp("view")
    common = [str(toy_scene_dir), "--downscale", "1", "--steps", "20", "--quiet", "--backend", "cpu"]
    _ok(["train", *common, "--expert", "static", "--out", str(root / "static")])
    _ok(["train", *common, "--expert", "spacetime", "--out", str(root / "spacetime")])
    ckpt = root / "spacetime" / "checkpoints" / "last.pt"
    payload = torch.load(ckpt, weights_only=False)
    model = payload["model"]
    model["splats.t_scale"].fill_(2.0)
    model["splats.opacities"].fill_(0.0)
    model["splats.scales"].fill_(float(np.log(0.05 * payload["scene_meta"]["extent"])))
    model["splats.motion"][:, 0] = 0.5 * payload["scene_meta"]["extent"]
    torch.save(payload, ckpt)
    _ok(["train-moe", "--experts", str(root / "static" / "checkpoints" / "last.pt"), str(ckpt), str(toy_scene_dir),
         "--downscale", "1", "--steps", "6", "--quiet", "--out", str(root / "moe"), "--backend", "cpu"])
    return root


class Page:
    """A viewer of ``model`` opened in headless chromium; records the page's console errors."""

    def __init__(self, pw, model: ViewModel):
        self.viewer = Viewer(model, ViewerConfig(port=0, max_side=SIDE, backend="cpu"))
        self.browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        self.page = self.browser.new_page(viewport={"width": 1000, "height": 600})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(self.viewer.url)
        # Toasts (headless chromium's "software WebGL" one) would cover the canvas in screenshots.
        self.page.add_style_tag(content=".mantine-Notifications-root { display: none !important; }")

    def close(self):
        self.browser.close()
        self.viewer.stop()

    def choose(self, current: str, option: str) -> None:
        """Pick ``option`` in the page's dropdown that shows ``current``, as a user would."""
        self.page.locator(f"input[value='{current}']").first.click()
        self.page.get_by_role("option", name=option, exact=True).first.click()

    def client(self):
        deadline = time.monotonic() + 30
        while not self.viewer.clients:
            assert time.monotonic() < deadline, "the page never connected"
            time.sleep(0.1)
        return next(iter(self.viewer.clients.values()))

    def canvas(self) -> np.ndarray:
        """``[H, W, 3]`` float in ``[0, 1]``: what the page's 3D canvas shows."""
        png = self.page.locator("canvas >> visible=true").last.screenshot()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255.0

    def shown(self, width: int, height: int, letterboxed: bool) -> np.ndarray:
        """The canvas's frame of a ``width x height`` camera (a scene camera's letterboxed, the free
        camera's filling the canvas), resampled to that size."""
        img = self.canvas()
        H, W = img.shape[:2]
        if not letterboxed:
            box = (0, 0, W, H)
        elif W / H > width / height:
            w = H * width / height
            box = ((W - w) / 2, 0, (W + w) / 2, H)
        else:
            h = W * height / width
            box = (0, (H - h) / 2, W, (H + h) / 2)
        pil = Image.fromarray((img * 255 + 0.5).astype(np.uint8)).resize((width, height), Image.BOX, box=box)
        return np.asarray(pil, dtype=np.float64) / 255.0

    def wait_for(self, predicate, what: str, timeout: float = 30.0):
        """Poll the page until ``predicate(frame, camera)`` holds for the shown refined frame; fail with ``what``
        otherwise (the last frame is kept in ``self.last`` for the failure report)."""
        deadline = time.monotonic() + timeout
        self.last = None
        while time.monotonic() < deadline:
            c = self.client()
            if c.frame is not None and c.frame.refined and c.frame.camera is not None:
                cam = c.frame.camera
                self.last = self.shown(cam.width, cam.height, letterboxed=cam.name != "free")
                if predicate(self.last, cam):
                    return self.last
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:  # a frame of another camera
        return -np.inf
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-12)))


def _reference(model: ViewModel, label: str, t: float) -> tuple[np.ndarray, object]:
    cam = model.cameras()[label]
    cam = cam.scaled(SIDE / max(cam.width, cam.height))
    return model.render(cam, t, model.modes[0]).astype(np.float64) / 255.0, cam


# Measured on these runs: 35-40 dB between the page's frame and the same moegs render (JPEG at quality 90, the
# canvas' upsampling and the box resampling back); the moving expert at its first and last times: 16 dB.
PSNR_BAR = 30.0


def test_expert_frames_are_moegs_renders_and_follow_the_time_slider(runs):
    model = ViewModel.load(runs / "spacetime", backend="cpu")
    label = next(iter(model.cameras()))
    assert label.startswith("test") and model.notice == ""
    with playwright.sync_playwright() as pw:
        view = Page(pw, model)
        try:
            ref0, cam = _reference(model, label, model.times[0])
            ref1, _ = _reference(model, label, model.times[-1])
            assert _psnr(ref0, ref1) < PSNR_BAR - 8, _psnr(ref0, ref1)  # the two times look different
            # render_expert of the shown camera is what the viewer renders
            direct = render_expert(model.expert, cam.with_time(0.0), background=model.background,
                                   backend="cpu").color.detach().clamp(0, 1).numpy()
            assert _psnr(ref0, direct) > 45
            shown = view.wait_for(lambda f, _: _psnr(f, ref0) > PSNR_BAR, "the first frame")
            assert shown.std() > 0.02  # not blank
            assert view.viewer.camera_choice.value == label
            # The time slider, moved in the page with the keyboard (End: its maximum).
            view.page.get_by_role("slider").first.focus()
            view.page.keyboard.press("End")
            view.wait_for(lambda f, _: _psnr(f, ref1) > PSNR_BAR and _psnr(f, ref0) < PSNR_BAR - 8,
                          "the frame at the last time")
            assert view.viewer.time.value == pytest.approx(1.0)
            text = view.page.inner_text("body")
            assert f"render: {cam.width}x{cam.height} in" in text  # the render time is shown
            assert view.errors == []
        finally:
            view.close()


def test_mixture_weight_map_uses_the_legend_colours(runs):
    model = ViewModel.load(runs / "moe", backend="cpu")
    assert model.modes == ["blend", WEIGHTS, "static", "spacetime"]
    label = next(iter(model.cameras()))
    with playwright.sync_playwright() as pw:
        view = Page(pw, model)
        try:
            ref, cam = _reference(model, label, model.times[0])
            view.wait_for(lambda f, _: _psnr(f, ref) > PSNR_BAR, "the blend")
            view.choose("blend", WEIGHTS)
            wmap = model.render(cam, model.times[0], WEIGHTS).astype(np.float64) / 255.0
            shown = view.wait_for(lambda f, _: _psnr(f, wmap) > PSNR_BAR, "the weight map")
            # Every pixel is a blend w c_0 + (1 - w) c_1 of the two legend colours: near their segment
            # (the frame's border pixels, resampled with the letterbox bars, left out).
            shown = shown[2:-2, 2:-2]
            c0, c1 = model.palette.double().numpy()
            d = c1 - c0
            s = np.clip(((shown - c0) @ d) / (d @ d), 0, 1)
            off = np.linalg.norm(shown - (c0 + s[..., None] * d), axis=-1)
            assert np.quantile(off, 0.99) < 0.06, np.quantile(off, [0.5, 0.9, 0.99])
            assert view.viewer.legend.visible
            assert view.page.get_by_text("legend").count() >= 1
            # One expert alone, then the gate-pruned mixture.
            view.choose(WEIGHTS, "spacetime")
            alone = model.render(cam, model.times[0], "spacetime").astype(np.float64) / 255.0
            view.wait_for(lambda f, _: _psnr(f, alone) > PSNR_BAR, "the spacetime expert alone")
            view.choose("spacetime", "blend")
            view.viewer.pruned.value = True
            counts = model.prune_counts
            assert [a + r for a, r in zip(counts["after"], counts["removed"])] == counts["before"]
            pruned = model.render(cam, model.times[0], "blend", pruned=True).astype(np.float64) / 255.0
            view.wait_for(lambda f, _: _psnr(f, pruned) > PSNR_BAR, "the pruned blend")
            assert view.errors == []
        finally:
            view.close()


def test_without_its_scene_the_free_camera_still_works(runs, tmp_path):
    model = ViewModel.load(runs / "static", data=tmp_path / "gone", backend="cpu")
    assert model.scene is None and "free camera only" in model.notice and model.cameras() == {}
    with playwright.sync_playwright() as pw:
        view = Page(pw, model)
        try:
            assert view.viewer.camera_choice.value == FREE

            def free_render(f, cam):
                ref = model.render(cam, model.times[0], model.modes[0]).astype(np.float64) / 255.0
                return cam.name == "free" and cam.near == model.near and f.std() > 0.02 and _psnr(f, ref) > PSNR_BAR

            view.wait_for(free_render, "a free-camera frame")
            assert "free camera only" in view.page.inner_text("body")
            assert view.errors == []
        finally:
            view.close()


def test_free_camera_clips_where_the_scene_cameras_do(runs, tmp_path):
    model = ViewModel.load(runs / "static", backend="cpu")
    assert model.near == min(v.camera.near for v in model.scene.views) > FREE_NEAR
    moved = ViewModel.load(runs / "static", data_overrides={"near": 0.3}, backend="cpu")
    assert moved.near == 0.3 and {v.camera.near for v in moved.scene.views} == {0.3}
    assert ViewModel.load(runs / "static", data=tmp_path / "gone", backend="cpu").near == FREE_NEAR
    assert ViewModel.load(runs / "static", data=tmp_path / "gone", data_overrides={"near": 0.3}).near == 0.3


def _one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moegs: error: "), err
    return err[0]


def test_bad_input_is_one_line(runs, tmp_path, capsys):
    (tmp_path / "empty_run").mkdir()
    assert "without checkpoints" in _one_error_line(capsys, ["view", str(tmp_path / "empty_run")])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in _one_error_line(capsys, ["view", str(tmp_path / "junk.pt")])
    assert "near must be a positive number" in _one_error_line(capsys, ["view", str(runs / "static"), "--near", "-1"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_error_line(capsys, ["view", str(runs / "static"), "--port", str(port)])
    assert f"--port {port}: already in use" in line
