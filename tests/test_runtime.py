"""Process-wide CPU settings of the command line: glibc's malloc kept from unmapping per-step tensors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from moegs.runtime import tune_allocator

# Allocates, touches and frees tensors of 3-20 MB as a training step does, then prints the page faults
# one such step costs after a warm-up.
_STEPS = """
import resource, sys, torch
from moegs.runtime import tune_allocator
applied = tune_allocator() if sys.argv[1] == "tuned" else False
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
sizes = [3 << 20, 9 << 20, 20 << 20, 5 << 20]
for i in range(23):
    if i == 3:
        f0 = faults()
    ts = [torch.empty(s // 4).fill_(1.0) for s in sizes]
    del ts
print(applied, (faults() - f0) / 20)
"""


def _faults_per_step(mode: str) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _STEPS, mode], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    return applied, float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_reuses_step_sized_blocks():
    applied, tuned = _faults_per_step("tuned")
    assert applied == "True"
    # a step touches 37 MB, about 9.5k pages: tuned, it faults none of them in again
    assert tuned < 16
    _, plain = _faults_per_step("plain")
    assert tuned <= plain


def test_user_malloc_settings_are_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert tune_allocator() is False
