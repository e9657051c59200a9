"""Device-clean code: no tensor in ``src/`` is created without the device of its neighbours.

A factory call (``torch.zeros``, ``ones``, ``empty``, ``full``, ``arange``, ``tensor``, ``rand*``,
``linspace``, ``eye``) must pass ``device=``; tensors derived from another tensor (``x.new_*``,
``torch.*_like``) inherit it. Calls that make CPU tensors on purpose (a seeded CPU generator, host-side
bookkeeping that is moved explicitly) carry the comment ``# cpu: <why>`` on their line.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "moegs"
FACTORIES = {"zeros", "ones", "empty", "full", "arange", "tensor", "rand", "randn", "randint", "randperm",
             "linspace", "logspace", "eye", "as_tensor"}
MARK = "# cpu:"


def violations(source: str, name: str = "<src>") -> list[str]:
    """``file:line: call`` for every factory call without ``device=`` and without the ``# cpu:`` mark."""
    lines = source.splitlines()
    out = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        f = node.func
        if not (isinstance(f.value, ast.Name) and f.value.id == "torch" and f.attr in FACTORIES):
            continue
        if any(k.arg == "device" for k in node.keywords):
            continue
        span = lines[node.lineno - 1 : (node.end_lineno or node.lineno)]
        if any(MARK in ln for ln in span):
            continue
        out.append(f"{name}:{node.lineno}: torch.{f.attr}(...)")
    return out


def test_scanner_flags_what_it_should():
    bad = "import torch\nx = torch.zeros(3)\ny = torch.arange(4, dtype=torch.long)\n"
    good = ("import torch\nx = torch.zeros(3, device=d)\ny = t.new_zeros(3)\nz = torch.zeros_like(t)\n"
            "g = torch.randperm(5, generator=gen)  # cpu: the seeded generator lives on the CPU\n")
    assert len(violations(bad)) == 2
    assert violations(good) == []


def test_src_is_device_clean():
    found = [v for p in sorted(SRC.rglob("*.py")) for v in violations(p.read_text(), str(p.relative_to(SRC)))]
    assert not found, "factory calls without device= (add device=..., derive from a tensor, or mark '# cpu: why'):\n" + "\n".join(found)
