"""``kill -9`` of one rank at random points under ``torchrun --max-restarts``: the run completes its
image budget, every checkpoint on disk loads, and the work lost to each kill is at most one
checkpoint interval.

Lost work is measured two ways. Where the kill point is known (the quick variant: a seeded rank
kills itself after a seeded number of images), it is the images reached minus those of the
checkpoint the restart resumed from. Either way the restarted attempt writes a metrics row,
``restart/recomputed_images``: the images the killed attempt had logged past that checkpoint,
which the run computes again. The heavy variant kills a seeded random rank from outside, several
times per run, once the run has logged a seeded random number of images: kills land in any phase,
checkpoint writes included.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pretrain.tracking import read_metrics
from tests.faults.run_checks import assert_every_checkpoint_loads, restarts, train_rows
from tests.pretrain_runs import REPO, job_env, make_shards, torchrun, write_config

EVERY = 32  # checkpoint interval, images
GLOBAL_BATCH = 8  # 4 per rank x 2 ranks


def _ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.xdist_group("torchrun")
@pytest.mark.parametrize("seed", [8])
def test_a_rank_killed_at_a_random_point_resumes_and_loses_at_most_one_interval(tmp_path, seed):
    rng = random.Random(seed)
    rank, crash_after = rng.randrange(2), rng.randrange(1, 96 - GLOBAL_BATCH)
    train, _ = make_shards(tmp_path)
    config = write_config(tmp_path / "run.yaml", train, None, tmp_path / "runs", "crash",
                          checkpoint={"every_images": EVERY}, tracking={"log_every_steps": 1})
    done = torchrun(["--config", str(config), "--crash-rank", str(rank), "--crash-after-images", str(crash_after)],
                    job_env(), timeout=300, launcher=("--max-restarts=1",))
    _ok(done)
    assert "exitcode: -9" in done.stderr  # the kill really happened
    run_dir = tmp_path / "runs" / "crash"
    latest = assert_every_checkpoint_loads(run_dir)
    assert latest["images_seen"] == 96 and latest["step"] == 12
    # The rank died right after the step that reached crash_after images, before that step's
    # checkpoint (if one was due) was written.
    killed_at = -(-crash_after // GLOBAL_BATCH) * GLOBAL_BATCH
    resumed_from = (killed_at - 1) // EVERY * EVERY
    (restart,) = restarts(run_dir)
    assert restart["restart/from_images"] == resumed_from
    lost = killed_at - resumed_from
    assert 0 < lost <= EVERY
    # Logged every step: the killed attempt logged up to the step before the kill.
    assert restart["restart/recomputed_images"] == max(0, killed_at - GLOBAL_BATCH - resumed_from)
    assert [r["step"] for r in train_rows(run_dir)] == list(range(1, 13))  # one row per step, none doubled
    print(f"rank {rank} killed at {killed_at} images; resumed from {resumed_from}; lost {lost} images "
          f"(interval {EVERY})")


def _ranks(agent: int) -> dict[int, int]:
    """RANK -> pid of the worker processes the torchrun agent ``agent`` is running now."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0") if parent == agent else []
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        rank = next((v for v in environ if v.startswith(b"RANK=")), None)
        if rank is not None:
            found[int(rank[5:])] = int(entry)
    return found


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, "the run ended before the kill was due"
        assert time.monotonic() < deadline, "timed out waiting for the run to get there"
        time.sleep(0.05)


def _kill_rank_after(process: subprocess.Popen, run_dir: Path, images: int, kills_so_far: int,
                     rng: random.Random) -> int:
    """Once the attempt after ``kills_so_far`` restarts has logged a step at or past ``images`` (its
    first step when it resumed past them), SIGKILL a random rank."""
    def due() -> bool:
        rows = read_metrics(run_dir)
        starts = [i for i, row in enumerate(rows) if "restart/from_images" in row]
        if len(starts) != kills_so_far:
            return False
        current = rows[starts[-1] + 1:] if starts else rows  # logged by the attempt now running
        return any("loss" in row and row["images"] >= images for row in current)

    _wait_for(due, process)
    time.sleep(rng.uniform(0.0, 0.4))  # anywhere in the next step or two: a checkpoint write, a log step
    ranks = _ranks(process.pid)
    rank = rng.choice(sorted(ranks))
    os.kill(ranks[rank], signal.SIGKILL)
    return rank


@pytest.mark.heavy
@pytest.mark.xdist_group("torchrun")
@pytest.mark.parametrize("seed", [1, 2])
def test_ranks_killed_from_outside_again_and_again_lose_at_most_one_interval_each(tmp_path, seed):
    rng = random.Random(seed)
    budget, kills = 192, 3
    train, _ = make_shards(tmp_path)
    config = write_config(tmp_path / "run.yaml", train, None, tmp_path / "runs", "kills",
                          optim={"total_images": budget}, checkpoint={"every_images": EVERY},
                          tracking={"log_every_steps": 1})
    run_dir = tmp_path / "runs" / "kills"
    targets = sorted(rng.sample(range(GLOBAL_BATCH, budget - 2 * EVERY, GLOBAL_BATCH), kills))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               f"--max-restarts={kills}", "-m", "pretrain", "--config", str(config)]
    process = subprocess.Popen(command, cwd=REPO, env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        killed = [_kill_rank_after(process, run_dir, target, k, rng) for k, target in enumerate(targets)]
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr[-4000:]
    assert stderr.count("exitcode: -9") == kills, stderr[-4000:]
    latest = assert_every_checkpoint_loads(run_dir)
    assert latest["images_seen"] == budget
    rows = restarts(run_dir)
    assert len(rows) == kills
    lost = [row["restart/recomputed_images"] for row in rows]
    assert all(0 <= n <= EVERY for n in lost), lost
    assert [r["step"] for r in train_rows(run_dir)] == list(range(1, budget // GLOBAL_BATCH + 1))
    print(f"seed {seed}: killed ranks {killed} after {targets} images; resumed from "
          f"{[r['restart/from_images'] for r in rows]}; recomputed {lost} images (interval {EVERY})")
