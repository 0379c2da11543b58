"""The data stages' process pools (data/worker_pool.py): workers end by themselves when the process
that started them is killed, and ordered_map keeps results in order while reading ahead boundedly."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from data.worker_pool import PARENT_CHECK_S, ordered_map, start_pool
from tests.faults.child_process import workers_left_after_killing

REPO = Path(__file__).resolve().parents[2]

# A parent that starts a pool, gives it work that is still queued and running, prints the workers'
# pids and waits to be killed.
_PARENT = r"""
import os, sys, time
from data.worker_pool import start_pool
pool = start_pool(2)
pending = [pool.apply_async(time.sleep, (30,)) for _ in range(4)]
print(" ".join(str(p.pid) for p in pool._pool), flush=True)
time.sleep(60)
"""


def test_workers_end_when_their_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(workers) == 2
    left = workers_left_after_killing(parent, workers, timeout=10 * PARENT_CHECK_S + 5)
    assert not left, f"workers {left} outlived their killed parent"


def _square_slowly(x: int) -> int:
    time.sleep(0.01 * (x % 3))
    return x * x


def test_ordered_map_keeps_the_order_and_reads_boundedly_ahead():
    read = []

    def items():
        for i in range(40):
            read.append(i)
            yield i

    with start_pool(2) as pool:
        results = []
        for result in ordered_map(pool, _square_slowly, items(), ahead=4):
            results.append(result)
            assert len(read) <= len(results) + 4
    assert results == [i * i for i in range(40)]
