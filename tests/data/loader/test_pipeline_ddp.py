"""The loader under a real 2-process torchrun (gloo, CPU), 2 DataLoader workers per rank."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shard_factory import Sample, simple_shards, with_vocab_sha256, write_shard_dir

WORKER = Path(__file__).with_name("ddp_loader_worker.py")
SIZES = [29, 4, 11]  # uneven: one big shard, one smaller than a batch


def _torchrun(repo: Path, out: Path, *arguments: str) -> tuple[list[dict], str]:
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(WORKER), *arguments]
    try:
        done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun did not finish in 150 s (a rank waiting on another?): {err.stderr}")
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)], done.stderr


@pytest.mark.slow
def test_torchrun_ranks_get_equal_batches_and_cover_every_sample_once(tmp_path, repo):
    shards = simple_shards(tmp_path / "shards", SIZES, num_labels=3, size=(40, 32))
    out = tmp_path / "out"
    ranks, stderr = _torchrun(repo, out, str(shards), str(out))
    # 44 images / (4 per batch x 2 ranks) = 6 batches per rank, a multiple of the 2 workers
    for result in ranks:
        assert result["batches"] == [6, 6] and result["batches_per_epoch"] == 6
        assert result["all_batches"] == [[6, 6], [6, 6]]
    seen = ranks[0]["eval_keys"] + ranks[1]["eval_keys"]
    expected = [f"s{s}_{i:04d}" for s, n in enumerate(SIZES) for i in range(n)]
    assert sorted(seen) == sorted(expected)  # every sample once, across ranks and workers
    assert "single_node_only" not in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_torchrun_ranks_get_equal_batches_from_a_weighted_mixture(tmp_path, repo):
    """The same run over two shard sets weighted 3:1 (uneven shards, one set's shard smaller than a
    batch): equal batch counts on both ranks, and the eval pass covers both sets once."""
    shards = with_vocab_sha256(simple_shards(tmp_path / "shards", SIZES, num_labels=3, size=(40, 32)))
    mixed_sizes = [7, 3, 10]
    other = with_vocab_sha256(write_shard_dir(
        tmp_path / "other", [[Sample(f"m{s}_{i:04d}", [i % 3]) for i in range(n)] for s, n in enumerate(mixed_sizes)],
        3, size=(40, 32), seed=1))
    out = tmp_path / "out"
    ranks, stderr = _torchrun(repo, out, str(shards), str(out), "--mix", str(other))
    # 44 + 20 images / (4 per batch x 2 ranks) = 8 batches per rank, a multiple of the 2 workers
    for result in ranks:
        assert result["batches"] == [8, 8] and result["batches_per_epoch"] == 8
        assert result["all_batches"] == [[8, 8], [8, 8]]
    seen = ranks[0]["eval_keys"] + ranks[1]["eval_keys"]
    expected = ([f"s{s}_{i:04d}" for s, n in enumerate(SIZES) for i in range(n)]
                + [f"m{s}_{i:04d}" for s, n in enumerate(mixed_sizes) for i in range(n)])
    assert sorted(seen) == sorted(expected)
    assert "Traceback" not in stderr
