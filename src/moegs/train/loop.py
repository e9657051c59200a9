"""The run skeleton shared by every trainer (an expert alone, a mixture).

A trainer supplies the step; :func:`run_loop` supplies everything around it:
the tqdm bar with ETA, a log window averaged into ``metrics.jsonl``,
checkpoints on a cadence and at the end, and rank handling (in a
data-parallel run only rank 0 writes and shows progress). :func:`open_run_dir`
prepares a run directory for a fresh or resumed run (``config.json``, and the
metrics logged after the resumed checkpoint dropped, so the file reads as one
uninterrupted run).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from .. import io
from . import distributed as dist

__all__ = ["Steppable", "run_loop", "open_run_dir"]


class Steppable(Protocol):
    """What :func:`run_loop` drives."""

    step: int  # steps done so far (the next step's index)
    elapsed: float  # seconds spent in train_step so far (kept in checkpoints)

    def train_step(self) -> dict[str, float]:
        """Run one step (and advance ``step``); the step's scalar metrics, at least ``loss`` and ``psnr``."""

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_<step>.pt`` and ``checkpoints/last.pt``."""


def _mean_window(window: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in window for k in r})
    return {k: sum(r[k] for r in window if k in r) / sum(1 for r in window if k in r) for k in keys}


def run_loop(trainer: Steppable, total_steps: int, *, run_dir: Path | None, log_every: int, checkpoint_every: int,
             desc: str, progress: bool = True, log_fields: Callable[[], dict[str, Any]] | None = None,
             on_log: Callable[[dict], None] | None = None) -> list[dict]:
    """Step ``trainer`` until ``total_steps``; returns the logged records (also appended to metrics.jsonl).

    Every ``log_every`` steps (and at the end) the window's metrics are averaged into one record with
    ``step`` and ``elapsed_s`` and whatever ``log_fields()`` adds (e.g. the Gaussian count).
    """
    from tqdm.auto import tqdm

    main = dist.is_main()
    writes = run_dir is not None and main
    records: list[dict] = []
    window: list[dict[str, float]] = []
    bar = tqdm(total=total_steps, initial=trainer.step, disable=not (progress and main), desc=desc,
               dynamic_ncols=True)
    while trainer.step < total_steps:
        t0 = time.perf_counter()
        window.append(trainer.train_step())
        trainer.elapsed += time.perf_counter() - t0
        bar.update(1)
        if trainer.step % log_every == 0 or trainer.step == total_steps:
            rec = {"step": trainer.step, **_mean_window(window), "elapsed_s": round(trainer.elapsed, 3)}
            if log_fields is not None:
                rec.update(log_fields())
            window = []
            records.append(rec)
            bar.set_postfix({k: f"{rec[k]:.4g}" for k in ("loss", "psnr", "num_gaussians") if k in rec})
            if writes:
                run_dir.mkdir(parents=True, exist_ok=True)
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
            if on_log is not None:
                on_log(rec)
        if writes and (trainer.step % checkpoint_every == 0 or trainer.step == total_steps):
            trainer.save_checkpoint()
    bar.close()
    if writes and not (run_dir / "checkpoints" / "last.pt").exists():
        trainer.save_checkpoint()  # a run with nothing to train still leaves its model
    return records


def open_run_dir(run_dir: Path, config: dict, resumed_step: int | None) -> None:
    """Create ``run_dir`` with ``config.json``; when resuming from ``resumed_step``, drop the records
    ``metrics.jsonl`` holds past it (logged after that checkpoint was written). Rank 0 only."""
    if not dist.is_main():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run_dir / "metrics.jsonl"
    if resumed_step is None:
        metrics.unlink(missing_ok=True)
    elif metrics.exists():
        keep = [ln for ln in metrics.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resumed_step]
        io.write_text(metrics, "".join(ln + "\n" for ln in keep))
    io.write_json(run_dir / "config.json", config)
