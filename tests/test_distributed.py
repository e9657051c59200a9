"""Data-parallel training over two processes (gloo on the CPU, as torchrun would launch it)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as tdist

    from conftest import make_toy_scene
    from moegs.train import TrainConfig
    from moegs.train.run import train_expert
    from moegs.train.trainer import Trainer

    seen, experts = [], []
    view_for_step, train = Trainer.view_for_step, Trainer.train

    def record_view(self, step):
        v = view_for_step(self, step)
        seen.append((v.camera_id, v.frame))
        return v

    def keep_expert(self, *a, **k):
        experts.append(self.expert)
        return train(self, *a, **k)

    Trainer.view_for_step, Trainer.train = record_view, keep_expert
    cfg = TrainConfig(expert="static", steps=16, log_every=4, checkpoint_every=16, backend="cpu", device="cpu",
                      eval_at_end=False)
    cfg.strategy.refine_start_iter = 4
    cfg.strategy.refine_every = 4
    cfg.strategy.grow_grad2d = 1e-6
    train_expert(make_toy_scene(), cfg, Path(out) / "run", progress=False)
    params = {k: v.detach().clone() for k, v in experts[0].splats.items()}
    torch.save({"seen": seen, "params": params}, Path(out) / f"rank{rank}.pt")
    tdist.destroy_process_group()


def test_two_ranks_stay_identical_and_split_the_views(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    # Within an epoch (15 training views) the two ranks draw disjoint views: 7 steps give 14 distinct ones.
    first = r0["seen"][:7] + r1["seen"][:7]
    assert len(set(first)) == 14
    # Same densification decisions and bit-identical parameters on both ranks.
    assert r0["params"]["means"].shape[0] > 300  # grew from the 300 initial points
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    # Only rank 0 wrote the run directory.
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 4
