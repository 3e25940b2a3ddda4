"""Data-parallel fitting: two gloo processes give the single-process result."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sdelm
from sdelm.synthetic import as_trajectories, double_well_paths

FIT = dict(epochs=12, batch_size=500, lr=3e-3, seed=0, device="cpu", progress=False)


def prepared() -> sdelm.PreparedData:
    trajs = as_trajectories(double_well_paths(n=160, steps=30), dt=0.05, per_prompt=2)
    return sdelm.prepare(trajs, dim=None, standardise=False, seed=0)


def fitted() -> sdelm.FitResult:
    return sdelm.fit(sdelm.NeuralSDE(2, hidden=32, time_scale=0, seed=0), prepared(), **FIT)


def worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        result = fitted()
        history = result.history[result.history["split"] == "val"]["nll"].tolist()
        Path(f"{out}.{rank}").write_text(
            json.dumps({"best": result.best_val_nll, "epoch": result.best_epoch,
                        "history": history,
                        "weights": [p.detach().sum().item() for p in result.model.parameters()]})
        )  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path):
    out = str(tmp_path / "result")
    mp.spawn(worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    ranks = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(2)]
    assert ranks[0] == ranks[1]  # every process ends with the same model
    single = fitted()
    assert abs(ranks[0]["best"] - single.best_val_nll) < 1e-4
    assert ranks[0]["epoch"] == single.best_epoch
    history = single.history[single.history["split"] == "val"]["nll"].tolist()
    assert max(abs(a - b) for a, b in zip(ranks[0]["history"], history, strict=True)) < 1e-4
    assert single.best_epoch > 0 and history[-1] < history[0]  # it did learn
