"""The loader under a real 2-process torchrun (gloo, CPU), 2 DataLoader workers per rank."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shard_factory import simple_shards

WORKER = Path(__file__).with_name("ddp_loader_worker.py")
SIZES = [29, 4, 11]  # uneven: one big shard, one smaller than a batch


@pytest.mark.slow
def test_torchrun_ranks_get_equal_batches_and_cover_every_sample_once(tmp_path, repo):
    shards = simple_shards(tmp_path / "shards", SIZES, num_labels=3, size=(40, 32))
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(WORKER), str(shards), str(out)]
    try:
        done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun did not finish in 150 s (a rank waiting on another?): {err.stderr}")
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    # 44 images / (4 per batch x 2 ranks) = 6 batches per rank, a multiple of the 2 workers
    for result in ranks:
        assert result["batches"] == [6, 6] and result["batches_per_epoch"] == 6
        assert result["all_batches"] == [[6, 6], [6, 6]]
    seen = ranks[0]["eval_keys"] + ranks[1]["eval_keys"]
    expected = [f"s{s}_{i:04d}" for s, n in enumerate(SIZES) for i in range(n)]
    assert sorted(seen) == sorted(expected)  # every sample once, across ranks and workers
    assert "single_node_only" not in done.stderr and "Traceback" not in done.stderr
