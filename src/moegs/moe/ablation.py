"""The router ablation: the router variants trained the same way on one scene, one table.

Every variant goes through :func:`~moegs.moe.run.train_mixture` with the same
experts, steps and seed; only ``MoEConfig.router`` differs (the uniform average
has nothing to train and runs zero steps; stage 3 is off so that the experts are
identical across rows).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..data import Scene, load_scene
from .router import ROUTERS
from .config import MoEConfig
from .run import train_mixture

__all__ = ["DESCRIPTIONS", "run_ablation", "format_table"]

DESCRIPTIONS = {
    "uniform": "uniform average of experts",
    "image": "image-level weights (per expert, linear in t)",
    "pixel_rgb": "pixel router on rendered RGB (no gates)",
    "gates": "Gaussian gates, no pixel decoder",
    "full": "volume-aware pixel router (gates + decoder)",
    "published": "published router (3-channel gates, shared per-expert decoder)",
}


def run_ablation(expert_ckpts: list[str | Path], data: str | Path | Scene, config: MoEConfig,
                 out_dir: str | Path, routers: tuple[str, ...] = ROUTERS, progress: bool = False) -> list[dict]:
    """Train and evaluate each router variant into ``out_dir/<router>``.

    Returns:
        One row per variant: ``router``, ``description``, ``test_psnr``, ``test_ssim``, ``test_lpips``,
        ``train_time_s``, ``usage`` (mean weight per expert on the test views).
    """
    scene = data if isinstance(data, Scene) else load_scene(data, config.data)
    rows = []
    for kind in routers:
        cfg = dataclasses.replace(config, router=kind, steps=0 if kind == "uniform" else config.steps,
                                  joint_steps=0, eval_at_end=True, eval_experts=False)
        s = train_mixture(expert_ckpts, scene, cfg, Path(out_dir) / kind, progress=progress)
        rows.append({"router": kind, "description": DESCRIPTIONS[kind], "test_psnr": s.get("test_psnr"),
                     "test_ssim": s.get("test_ssim"), "test_lpips": s.get("test_lpips"),
                     "train_time_s": s["train_time_s"], "usage": s.get("test_usage")})
    return rows


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
    if isinstance(v, list):
        return "/".join(_cell(x) for x in v)
    return str(v)


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain-text table of ``rows`` (dicts), one line per row, columns aligned."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    cells = [[c for c in columns]] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
