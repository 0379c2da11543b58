"""Resume: a run stopped half-way and resumed ends with the weights of an uninterrupted run.

One rank, no torchrun, in this process to save the interpreter start-up; the 2-rank runs are in
tests/test_pretrain_ddp.py. The faults (a kill while a checkpoint is written, a rank killed under
torchrun --max-restarts, a diverging run, a full disk) are in tests/faults/.
"""
from __future__ import annotations

import pytest
import torch

from pretrain.checkpoint import LATEST, load_checkpoint
from pretrain.config import load_config
from pretrain.tracking import read_metrics
from pretrain.train import DebugOptions, train
from tests.pretrain_runs import make_shards, write_config

# Same seed, same data stream, same arithmetic on one CPU thread: the resumed run is expected to be
# bit-identical; the stated tolerance leaves room for a BLAS that is not.
TOLERANCE = 1e-6


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_stop_at_half_then_resume_matches_an_uninterrupted_run(tmp_path, one_thread):
    shards, _ = make_shards(tmp_path)
    budget = {"total_images": 128, "warmup_images": 16, "decay_steps": 2}
    straight = write_config(tmp_path / "a.yaml", shards, None, tmp_path / "runs", "straight", optim=budget)
    split = write_config(tmp_path / "b.yaml", shards, None, tmp_path / "runs", "split", optim=budget)
    train(load_config(straight))
    # 64 images = 16 steps of 4 = two whole loader epochs of 32 images: the resumed stream is the same.
    stopped = train(load_config(split), DebugOptions(stop_after_images=64))
    assert stopped == {"images_seen": 64, "stopped_early": True}
    half = load_checkpoint(tmp_path / "runs" / "split" / LATEST)
    assert half["images_seen"] == 64 and half["step"] == 16
    assert half["data_position"] == {"epoch": 1, "batch": 8, "resume_epoch": 2}
    assert half["scheduler"]["images_seen"] == 64
    resumed = train(load_config(split))
    assert resumed["images_seen"] == 128 and resumed["steps"] == 32

    a = load_checkpoint(tmp_path / "runs" / "straight" / LATEST)
    b = load_checkpoint(tmp_path / "runs" / "split" / LATEST)
    assert _max_difference(a["model"], b["model"]) <= TOLERANCE
    momentum_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert max((x - y).abs().max().item() for x, y in zip(momentum_a, momentum_b)) <= TOLERANCE
    assert a["scheduler"] == b["scheduler"]
    # The resumed run's metrics continue the stopped one's, step for step.
    rows = [(r["step"], r["images"]) for r in read_metrics(tmp_path / "runs" / "split") if "loss" in r]
    assert rows == [(step, step * 4) for step in range(2, 33, 2)]
    losses = [r["loss"] for r in read_metrics(tmp_path / "runs" / "straight") if "loss" in r]
    assert losses == pytest.approx([r["loss"] for r in read_metrics(tmp_path / "runs" / "split") if "loss" in r],
                                   abs=TOLERANCE)
