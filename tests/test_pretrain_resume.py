"""Resume: a run stopped half-way and resumed ends with the weights of an uninterrupted run; a
SIGKILL while a checkpoint is being written leaves the previous one loadable and the run resumes; a
diverging run stops with one clear error after writing a loadable checkpoint.

One rank, no torchrun, mostly in this process to save the interpreter start-up; the 2-rank runs and
the rank killed under torchrun --max-restarts are in tests/test_pretrain_ddp.py.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from data.errors import UserError
from pretrain.checkpoint import LATEST, load_checkpoint
from pretrain.config import load_config
from pretrain.tracking import read_metrics
from pretrain.train import DebugOptions, train
from tests.pretrain_runs import REPO, job_env, make_shards, write_config

# Same seed, same data stream, same arithmetic on one CPU thread: the resumed run is expected to be
# bit-identical; the stated tolerance leaves room for a BLAS that is not.
TOLERANCE = 1e-6


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.mark.slow
def test_a_diverging_run_stops_with_a_clear_error_and_a_loadable_checkpoint(tmp_path, one_thread):
    shards, _ = make_shards(tmp_path)
    config = write_config(tmp_path / "a.yaml", shards, None, tmp_path / "runs", "diverge",
                          optim={"base_lr": 1e12, "warmup_images": 0, "total_images": 400},
                          checkpoint={"every_images": 10_000})
    with pytest.raises(UserError, match=r"^training diverged: the last (\d+) optimiser steps had a non-finite "
                                        r"loss or gradient .* lower optim.base_lr"):
        train(load_config(config), DebugOptions(max_nonfinite_steps=3))
    run_dir = tmp_path / "runs" / "diverge"
    state = load_checkpoint(run_dir / LATEST)
    assert 0 < state["images_seen"] < 400
    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    assert rows[-1]["nonfinite_steps"] >= 3 and rows[-1]["step"] == state["step"]


@pytest.mark.slow
def test_a_kill_while_a_checkpoint_is_written_leaves_the_previous_one_and_the_run_resumes(tmp_path, one_thread):
    shards, _ = make_shards(tmp_path)
    # A checkpoint every step, so the kill has many writes to land in.
    config = write_config(tmp_path / "a.yaml", shards, None, tmp_path / "runs", "killed",
                          optim={"total_images": 96}, checkpoint={"every_images": 4, "keep_last": 2})
    run_dir = tmp_path / "runs" / "killed"
    command = [sys.executable, "-m", "pretrain", "--config", str(config)]
    process = subprocess.Popen(command, cwd=REPO, env=job_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    partial = None
    try:
        deadline = time.monotonic() + 120
        while partial is None and process.poll() is None and time.monotonic() < deadline:
            if run_dir.is_dir() and any(run_dir.glob("checkpoint-*.pt")):  # not the very first write
                partial = next((p for p in run_dir.glob(".checkpoint-*.tmp") if p.stat().st_size > 0), None)
            if partial is None:
                time.sleep(0.001)
        if partial is not None:
            process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None and partial is None:
            process.kill()
        process.wait(timeout=60)
    assert partial is not None, "the run ended before a checkpoint write was caught in flight"
    assert process.returncode == -signal.SIGKILL
    latest = load_checkpoint(run_dir / LATEST)  # the previous complete checkpoint
    assert 0 < latest["images_seen"] < 96
    numbered = sorted(int(p.stem.split("-")[1]) for p in run_dir.glob("checkpoint-[0-9]*.pt"))
    assert numbered[-1] == latest["images_seen"]
    resumed = train(load_config(config))
    assert resumed["images_seen"] == 96
    assert not list(run_dir.glob(".checkpoint-*.tmp"))  # the dead writer's temp file is cleaned up
