"""``moegs inspect PATH``: what a scene folder holds and how moegs reads it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import DataError
from . import detect_format, load_scene
from .colmap import find_model_dir, read_model
from .config import DataConfig

__all__ = ["inspect_scene", "print_inspection"]


def _frames_on_disk(path: Path, fmt: str) -> dict:
    """Counts taken from the files alone, so they are known even when loading fails."""
    if fmt == "n3v":
        return {"videos": len(list(path.glob("cam*.mp4")))}
    if fmt == "technicolor":
        return {"images": len(list(path.glob("*.png")))}
    if fmt == "colmap":
        facts = {"images": sum(1 for p in (path / "images").iterdir() if p.is_file())} if (path / "images").is_dir() else {}
        model_dir = find_model_dir(path)
        if model_dir is not None:
            try:
                facts["images listed in model"] = len(read_model(model_dir).images)
            except DataError:  # the loading error, reported in full by inspect_scene
                facts["images listed in model"] = "unreadable model"
        return facts
    return {}


def inspect_scene(path: str | Path, config: DataConfig | None = None) -> dict:
    """Facts about the scene folder ``path`` as a flat dict.

    Keys: ``path``, ``format``, ``on_disk`` (files found), and when the scene loads:
    ``cameras``, ``views_listed`` (train + test views the loader made), ``frames``
    (distinct times), ``resolution_original``, ``resolution_loaded``,
    ``time_range``, ``near_range`` (the cameras' near planes), ``train_views``, ``test_views``,
    ``initial_points``, ``extent``, ``info`` (the loader's own notes); when it does not, ``error``.

    Raises:
        DataError: if the folder is missing or of no known format.
    """
    config = config or DataConfig()
    path = Path(path)
    fmt = config.format or detect_format(path)
    out: dict = {"path": str(path), "format": fmt, "on_disk": _frames_on_disk(path, fmt)}
    try:
        scene = load_scene(path, DataConfig(**{**config.__dict__, "format": fmt}))
    except DataError as e:
        out["error"] = str(e)
        return out
    times = scene.times
    out.update(
        cameras=scene.num_cameras,
        views_listed=len(scene.views),
        frames=len(times),
        resolution_original=tuple(scene.info.get("original_resolution", scene.resolution())),
        resolution_loaded=scene.resolution(),
        time_range=(times[0], times[-1]),
        near_range=(min(v.camera.near for v in scene.views), max(v.camera.near for v in scene.views)),
        train_views=len(scene.train_views),
        test_views=len(scene.test_views),
        initial_points=len(scene.points),
        extent=scene.extent,
        info=scene.info,
    )
    return out


def print_inspection(path: str | Path, config: DataConfig | None = None, console: Console | None = None) -> dict:
    """Print :func:`inspect_scene` of ``path`` as a table; returns the dict too."""
    facts = inspect_scene(path, config)
    table = Table(title=f"scene {facts['path']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, int) for x in v):
            return f"{v[0]}x{v[1]}"
        if isinstance(v, tuple):
            return " - ".join(fmt(x) for x in v)
        if isinstance(v, dict):
            return ", ".join(f"{k}: {fmt(x)}" for k, x in v.items())
        return str(v)

    for key, label in (
        ("format", "format"),
        ("on_disk", "files present"),
        ("cameras", "cameras"),
        ("frames", "frames used"),
        ("views_listed", "views"),
        ("resolution_original", "resolution (original)"),
        ("resolution_loaded", "resolution (loaded)"),
        ("time_range", "time range"),
        ("near_range", "near planes"),
        ("train_views", "train views"),
        ("test_views", "test views"),
        ("initial_points", "initial points"),
        ("extent", "scene extent"),
        ("error", "error"),
    ):
        if key in facts:
            table.add_row(label, fmt(facts[key]), style="red" if key == "error" else None)
    for k, v in facts.get("info", {}).items():
        table.add_row(f"  {k}", fmt(v))
    (console or Console()).print(table)
    return facts
