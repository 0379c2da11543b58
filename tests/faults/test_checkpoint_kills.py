"""A kill during checkpoint writing: the previous checkpoint loads, and no partial file is ever named
as complete.

A child process writes big checkpoints in a loop (save_checkpoint: temp file, fsync, rename, then
checkpoint-latest.pt re-pointed, then pruning) and is SIGKILLed at seeded random moments, so kills
land in every phase. After each kill, every file named ``checkpoint-*.pt`` loads, resume finds a
checkpoint at most one save behind the newest, and the next save clears the dead temp files.

A kill landed inside a checkpoint write when the writer's temp file of a numbered checkpoint
(``.checkpoint-<images>.pt.<random>.tmp``) is left behind: it exists from the temp file's creation
to its rename. Random moments land there only part of the time (the directory fsyncs and the
pruning outside it take a good share of each save on some disks), so the quick test also kills a
writer the moment such a temp file is seen growing, and asserts that at least one kill left one:
the test cannot pass by killing only between writes.

Then a real pretraining run is killed while it writes a checkpoint, and resumes to its budget.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pretrain.checkpoint import LATEST, load_checkpoint, load_resume, numbered_checkpoints, save_checkpoint
from pretrain.config import load_config
from pretrain.train import train
from tests.faults.run_checks import assert_every_checkpoint_loads
from tests.pretrain_runs import REPO, job_env, make_shards, write_config

STEP = 100  # images between the child's checkpoints
# The temp file atomic_open writes a numbered checkpoint into (checkpoint-latest.pt's re-pointing
# uses '.checkpoint-latest.pt.link.tmp', which is not a checkpoint write).
WRITING = re.compile(r"^\.checkpoint-\d+\.pt\..+\.tmp$")

_WRITER = """
import sys, torch
from pretrain.checkpoint import save_checkpoint
run_dir = sys.argv[1]
save_checkpoint(run_dir, {"model": {"w": torch.ones(3)}, "step": 1}, 100, keep_last=3)
print("first", flush=True)
big = {"model": {f"w{i}": torch.full((1 << 18,), float(i)) for i in range(32)}}  # 32 MiB
images = 200
while True:  # the parent kills us somewhere in here
    save_checkpoint(run_dir, {**big, "step": images}, images, keep_last=3)
    images += 100
"""


def _kill_a_writer(run_dir: Path, delay: float | None) -> None:
    """SIGKILL the writer ``delay`` seconds after its first save, or (``delay`` None) as soon as the
    temp file of a numbered checkpoint holds bytes."""
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout.readline().strip() == b"first"
        if delay is None:
            deadline = time.monotonic() + 60
            while not _writing(run_dir) and time.monotonic() < deadline:
                time.sleep(0.0005)
        else:
            time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()


def _writing(run_dir: Path) -> bool:
    """A numbered checkpoint's temp file with bytes in it: a write in progress (or a dead writer's)."""
    for name in os.listdir(run_dir):
        if WRITING.match(name):
            try:
                if os.stat(run_dir / name).st_size > 0:
                    return True
            except FileNotFoundError:  # renamed in between
                pass
    return False


def _landed_in_a_write(run_dir: Path) -> bool:
    return any(WRITING.match(name) for name in os.listdir(run_dir))


def _check_after_a_kill(run_dir: Path) -> tuple[int, int, int]:
    """(newest numbered, resumed-from, dead temp files) after a kill; asserts nothing partial is named."""
    named = [p for p in run_dir.iterdir() if not p.name.startswith(".")]
    assert {p.name for p in named} <= {LATEST} | {p.name for _, p in numbered_checkpoints(run_dir)}
    for path in named:
        load_checkpoint(path)  # complete, or not named at all
    newest = numbered_checkpoints(run_dir)[-1][0]
    resumed = load_resume(run_dir, "auto").state["images_seen"]
    # latest is re-pointed right after the rename: a kill in between costs one save, never more
    assert newest - STEP <= resumed <= newest
    return newest, resumed, sum(p.name.startswith(".") for p in run_dir.iterdir())


def _kill_and_check(run_dir: Path, delay: float | None) -> tuple[tuple[int, int, int], bool]:
    """One kill: its outcome (see _check_after_a_kill) and whether it landed inside a write."""
    _kill_a_writer(run_dir, delay)
    outcome, inside = _check_after_a_kill(run_dir), _landed_in_a_write(run_dir)
    save_checkpoint(run_dir, {"model": {}, "step": 1}, 10_000_000, keep_last=3)  # the next save cleans up
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]
    return outcome, inside


def _kill_writers(tmp_path: Path, kills: int, seed: int) -> None:
    """``kills`` kills at seeded random moments, then kills aimed at a write in progress (seen from
    outside: its temp file growing) until one is caught inside a write, at most 3; every kill is
    checked the same way."""
    rng = random.Random(seed)
    delays: list[float | None] = [rng.uniform(0.0, 1.0) for _ in range(kills)]
    outcomes, inside = [], []
    for i, delay in enumerate(delays + [None] * 3):
        if delay is None and inside[kills:] and any(inside):
            break
        outcome, landed = _kill_and_check(tmp_path / f"run{i}", delay)
        outcomes.append(outcome)
        inside.append(landed)
    print(f"{len(outcomes)} kills ({kills} at random moments; newest numbered, resumed from, dead temp files): "
          f"{outcomes}; inside a write: {inside}")
    assert any(inside), "no kill landed inside a checkpoint write: the test checked nothing mid-write"


def test_a_checkpoint_writer_killed_at_random_moments_never_names_a_partial_file(tmp_path):
    _kill_writers(tmp_path, kills=3, seed=0)


@pytest.mark.heavy
def test_a_checkpoint_writer_killed_at_many_random_moments_never_names_a_partial_file(tmp_path):
    _kill_writers(tmp_path, kills=12, seed=1)


@pytest.mark.slow
def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path, one_thread):
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
    latest = assert_every_checkpoint_loads(run_dir)  # the previous complete checkpoint
    assert 0 < latest["images_seen"] < 96
    resumed = train(load_config(config))
    assert resumed["images_seen"] == 96
    assert not list(run_dir.glob(".checkpoint-*.tmp"))  # the dead writer's temp file is cleaned up
