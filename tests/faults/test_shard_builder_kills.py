"""kill -9 of a shard-building node in each phase of a two-node build (scan, waiting for the other
node, plan, build): the killed node's rerun resumes from what its finished phases wrote and the
shards, info.json and report.json are byte-identical to a one-node build. And a killed builder's
pool workers end by themselves instead of waiting forever on a queue nobody feeds.

Each node is a real ``scripts/build_shards.py`` process on a Parquet corpus of 10 row groups (one
chunk each); a node's phase is read from the status file it keeps, ``.build/node-<rank>.json``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from data.worker_pool import PARENT_CHECK_S
from tests.faults.child_process import children, workers_left_after_killing
from tests.shard_corpus import make_parquet_corpus, node_command
from tests.shard_factory import built_files

TIMEOUT_S = 120


def _start(root: Path, out: Path, rank: int, workers: int = 1) -> subprocess.Popen:
    return subprocess.Popen(node_command(root, out, rank, 2, workers), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _phase(out: Path, rank: int) -> str | None:
    try:
        return json.loads((out / ".build" / f"node-{rank}.json").read_text())["phase"]
    except (OSError, ValueError, KeyError):
        return None


def _kill_when(process: subprocess.Popen, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        assert process.poll() is None, f"the node ended before it could be killed: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def _finish(*processes: subprocess.Popen) -> None:
    for process in processes:
        _, err = process.communicate(timeout=TIMEOUT_S)
        assert process.returncode == 0, err[-3000:]


def _parts(out: Path) -> set[str]:
    return {p.name for p in out.glob(".build/scan-*/part-*.parquet")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("corpus")
    make_parquet_corpus(root, good=40, size=(320, 240))
    subprocess.run(node_command(root, root / "reference", 0, 1, 1), check=True, capture_output=True)
    return root, built_files(root / "reference")


def _wait_until(ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("phase", ["scan", "wait", "plan", "build"])
def test_a_node_killed_in_any_phase_resumes_to_the_bytes_of_an_uninterrupted_build(corpus, tmp_path, phase):
    root, reference = corpus
    out = tmp_path / "out"
    if phase == "scan":  # node 1 killed after its first part, with more to scan
        rank, other = 1, _start(root, out, 0)
        _kill_when(_start(root, out, 1), lambda: "part-000001.parquet" in _parts(out))
        assert "part-000009.parquet" not in _parts(out), "node 1 finished its scan before it was killed"
    elif phase == "wait":  # node 0 alone: its share scanned, waiting for node 1's
        rank = 0
        _kill_when(_start(root, out, 0), lambda: _phase(out, 0) == "wait")
        other = _start(root, out, 1)
    elif phase == "plan":  # node 1 has scanned and waits for the plan; node 0 killed as it plans
        rank, other = 0, _start(root, out, 1)
        _wait_until(lambda: _phase(out, 1) == "wait")
        _kill_when(_start(root, out, 0), lambda: _phase(out, 0) == "plan")
        assert not (out / ".build" / "plan.json").exists(), "the plan was done before node 0 was killed"
    else:  # node 0 killed after its first shard, node 1 building on
        rank, other = 0, _start(root, out, 1)
        _kill_when(_start(root, out, 0), lambda: (out / ".build" / "train-000000.json").exists())
    assert not (out / "info.json").exists()
    _finish(_start(root, out, rank), other)
    assert built_files(out) == reference


def test_a_killed_builder_leaves_no_worker_behind(corpus, tmp_path):
    root, _ = corpus
    out = tmp_path / "out"
    node = subprocess.Popen(node_command(root, out, 0, 1, 2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    _wait_until(lambda: (out / ".build" / "train-000000.json").exists())
    workers = children(node.pid)
    assert len(workers) == 2
    left = workers_left_after_killing(node, workers, timeout=10 * PARENT_CHECK_S + 5)
    assert not (out / "info.json").exists(), "the build finished before it could be killed"
    assert not left, f"pool workers {left} outlived the killed builder"
