"""Shared fixtures. Real public scenes are read in place from the data folder beside
the project (``../data`` relative to the repository's parent, or ``$MOEGS_TEST_DATA``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MOEGS_TEST_DATA", REPO.parent / "shared" / "data"))


def data_path(name: str) -> Path:
    """Path of a shared real scene; skips the test when the data folder is not there."""
    p = DATA_DIR / name
    if not p.exists():
        pytest.skip(f"real scene {name} not found under {DATA_DIR} (set MOEGS_TEST_DATA)")
    return p


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
