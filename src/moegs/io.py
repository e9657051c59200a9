"""Atomic file output: every file moegs writes appears whole or not at all.

Each writer goes to a temporary file beside the target (same filesystem) and is
renamed over it with ``os.replace``; an exception (or a kill) leaves at most a
hidden ``.<name>.*.tmp`` file, never a half-written target.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["cache_dir", "atomic_path", "atomic_open", "write_json", "write_text", "torch_save", "file_digest"]


def cache_dir(*parts: str) -> Path:
    """moegs's per-user cache folder (``$MOEGS_CACHE_DIR``, default ``~/.cache/moegs``), or a folder in it."""
    root = Path(os.environ.get("MOEGS_CACHE_DIR") or Path.home() / ".cache" / "moegs")
    return root.joinpath(*parts)


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes: what a run records of an input file to recognise it later."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path to write; renamed to ``path`` when the block ends without an exception.

    ``suffix`` keeps the extension for writers that choose the format from it (``.png``, ``.mp4``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """``open(path, mode)`` that only replaces ``path`` once the block has finished writing."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (non-JSON values as ``str``)."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, default=str)


def torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
