"""The command line end to end on a tiny generated scene: train, eval, render, train-moe, pipeline."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from moegs.cli.main import main


@pytest.fixture
def tiny(toy_scene_dir):
    return toy_scene_dir


def _png(path):
    from PIL import Image

    return np.asarray(Image.open(path), dtype=np.float64) / 255.0


def _ok(argv):
    assert main(argv) == 0, argv


def test_train_eval_render_and_mixture(tiny, tmp_path):
    common = ["--downscale", "1", "--steps", "6", "--quiet", "--set", "checkpoint_every=3"]
    _ok(["train", str(tiny), "--expert", "static", "--out", str(tmp_path / "a"), *common])
    _ok(["train", str(tiny), "--expert", "spacetime", "--out", str(tmp_path / "b"), *common])
    for run in ("a", "b"):
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        # The reported test PSNR is the one of the renders written next to their ground truth.
        renders = sorted((tmp_path / run / "renders" / "test").glob("*[0-9].png"))
        assert len(renders) == 3
        psnrs = [10 * np.log10(1 / np.mean((_png(r) - _png(r.with_name(r.stem + "_gt.png"))) ** 2)) for r in renders]
        assert np.mean(psnrs) == pytest.approx(summary["test_psnr"], abs=0.1)  # 8-bit rounding of the PNGs
        assert {"config.json", "metrics.jsonl", "summary.json", "eval.json"} <= {p.name for p in (tmp_path / run).iterdir()}
    # Resuming a finished run changes nothing; a longer budget continues from the last checkpoint.
    _ok(["train", str(tiny), "--expert", "static", "--out", str(tmp_path / "a"), "--resume", "--downscale", "1",
         "--steps", "9", "--quiet"])
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["steps"] == 9
    # metrics.jsonl reads as one run: the records of the resumed part follow the first part's.
    steps = [json.loads(line)["step"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 9
    _ok(["eval", str(tmp_path / "a")])
    assert json.loads((tmp_path / "a" / "eval" / "eval.json").read_text())["num_views"] == 3
    _ok(["render", str(tmp_path / "b"), "--out", str(tmp_path / "b.mp4"), "--frames", "4"])
    with av.open(str(tmp_path / "b.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 4
    _ok(["train-moe", "--experts", str(tmp_path / "a" / "checkpoints" / "last.pt"),
         str(tmp_path / "b" / "checkpoints" / "last.pt"), str(tiny), "--downscale", "1", "--steps", "4",
         "--out", str(tmp_path / "moe"), "--quiet"])
    moe = json.loads((tmp_path / "moe" / "summary.json").read_text())
    assert moe["router"] == "full" and len(moe["experts"]) == 2 and "gain_over_best_db" in moe
    # A pruned, fine-tuned copy is a mixture run of its own; the source is left as it was.
    _ok(["prune", str(tmp_path / "moe"), "--out", str(tmp_path / "pruned"), "--keep", "0.9", "--steps", "3",
         "--data", str(tiny), "--set", "data.downscale=1", "--quiet"])
    pruned = json.loads((tmp_path / "pruned" / "prune.json").read_text())
    assert pruned["steps"] == 3 and sum(pruned["after"]) < sum(pruned["before"]) and pruned["test_psnr"] > 0
    assert pruned["keep"] == 0.9 and pruned["threshold"] > 0
    from moegs.moe import load_mixture

    m, _ = load_mixture(tmp_path / "pruned" / "checkpoints" / "last.pt")
    assert [e.splats["means"].shape[0] for e in m.experts] == pruned["after"]
    src, _ = load_mixture(tmp_path / "moe" / "checkpoints" / "last.pt")
    assert [e.splats["means"].shape[0] for e in src.experts] == pruned["before"]
    assert main(["prune", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    before = (tmp_path / "moe" / "checkpoints" / "last.pt").read_bytes()
    assert main(["prune", str(tmp_path / "moe"), "--out", str(tmp_path / "moe"), "--quiet"]) == 2  # never over its source
    assert main(["prune", str(tmp_path / "moe"), "--out", str(tmp_path / "y"), "--keep", "1.5", "--quiet"]) == 2
    assert (tmp_path / "moe" / "checkpoints" / "last.pt").read_bytes() == before and not (tmp_path / "y").exists()


def test_pipeline_writes_a_report(tiny, tmp_path):
    _ok(["pipeline", str(tiny), "--experts", "static", "spacetime", "--expert-steps", "6", "--moe-steps", "4",
         "--downscale", "1", "--out", str(tmp_path / "p"), "--quiet", "--set", "moe.prune.steps=3",
         "--set", "moe.joint_steps=3"])
    report = (tmp_path / "p" / "report.md").read_text()
    assert "| static |" in report and "mixture (gates)" in report
    data = json.loads((tmp_path / "p" / "report.json").read_text())
    assert len(data["table"]) == 4 and (tmp_path / "p" / data["video"]).exists()
    # stage 3 ran, and beside the mixture stands its fair baseline: the best expert fine-tuned alone as long
    base = data["stage3_baseline"]
    assert base["steps"] == 3 and base["expert"] == data["best_expert"] and f"| {base['model']} |" in report
    mix = json.loads((tmp_path / "p" / "mixture" / "summary.json").read_text())
    assert data["gain_over_finetuned_best_db"] == pytest.approx(mix["test_psnr"] - base["test_psnr"])
    assert "what stage 3 must beat" in report
    # the efficiency table's pruned rows: pruned then fine-tuned, as the line above the table says
    assert data["pruning"]["steps"] == 3 and "fine-tuned jointly for 3 steps" in report
    pruned = [r for r in data["efficiency"] if r["model"] == "pruned single-pass"][0]
    assert pruned["gaussians"] == sum(data["pruning"]["after"])
    for split in ("test", "train"):  # the per-pixel oracle is at least as good as every expert, on every view
        h = data["oracle"][split]
        assert h["oracle_psnr"] >= max(h["expert_psnr"]) - 1e-9 and "| oracle PSNR |" in report
        # and the oracle choosing per 16x16 tile lies between the best expert and it
        assert max(h["expert_psnr"]) - 1e-9 <= h["block_oracle_psnr"]["16"] <= h["oracle_psnr"] + 1e-9
        assert h["blend_oracle_psnr"]["16"] >= h["block_oracle_psnr"]["16"] - 1e-6
    assert "| oracle 16x16 |" in report and "| blend 16x16 |" in report
    # a generated scene's report breaks the test PSNR down by its ground-truth components
    regions = {r["region"]: r for r in data["regions"]}
    assert "background" in regions and sum(r["share"] for r in regions.values()) == pytest.approx(1.0)
    assert all(len(r["expert_psnr"]) == 2 for r in regions.values()) and "| background |" in report
    for f in data["figures"]:
        assert (tmp_path / "p" / f).exists()
